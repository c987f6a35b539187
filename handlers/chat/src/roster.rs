//! Who is here: members, their nicks (unique, case-insensitive) and rooms
//! (created on first join, removed when the last member leaves).
//!
//! Generic over the member key and per-member data so the rules are
//! unit-tested without a running loopd.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Hashes member keys: loopd's connection ids, which loopd hands out and no
/// client chooses, so nobody can aim collisions at them and SipHash (a
/// third of the cost of a fan-out, looked up once per recipient) buys
/// nothing. A multiply-rotate mix of the key's words (FxHash's).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdBuild = BuildHasherDefault<IdHasher>;

/// The case-insensitive key of a nick or room name (names are ASCII).
pub(crate) fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Case-insensitive order of two names, without allocating.
pub(crate) fn cmp_folded(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|b| b.to_ascii_lowercase())
        .cmp(b.bytes().map(|b| b.to_ascii_lowercase()))
        .then_with(|| a.cmp(b))
}

/// Whether `name` sorts at or after `from`, case-insensitively.
pub(crate) fn at_or_after(name: &str, from: &str) -> bool {
    name.bytes()
        .map(|b| b.to_ascii_lowercase())
        .cmp(from.bytes().map(|b| b.to_ascii_lowercase()))
        .is_ge()
}

/// One page of a sorted list.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Page<T> {
    /// At most the page size, in order.
    pub(crate) items: Vec<T>,
    /// The first entry after the page and how many there are from it on
    /// (itself included); `None` if the page reaches the end.
    pub(crate) next: Option<(T, usize)>,
}

/// A page of at most `max` nicks from a list gathered elsewhere (every
/// instance of a bridge), sorted as [`Roster::who`] sorts.
pub(crate) fn page_nicks(mut nicks: Vec<String>, max: usize) -> Page<String> {
    nicks.sort_unstable_by(|a, b| cmp_folded(a, b));
    nicks.dedup();
    let mut next = None;
    if nicks.len() > max {
        let rest = nicks.split_off(max);
        next = Some((rest[0].clone(), rest.len()));
    }
    Page { items: nicks, next }
}

/// A page of at most `max` rooms (key, name, members) gathered elsewhere,
/// sorted by key as [`Roster::rooms`] sorts.
pub(crate) fn page_rooms(
    mut rooms: Vec<(String, String, usize)>,
    max: usize,
) -> Page<(String, usize)> {
    rooms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut it = rooms.into_iter().map(|(_, name, n)| (name, n));
    let items = it.by_ref().take(max).collect();
    let next = it.next().map(|first| (first, 1 + it.count()));
    Page { items, next }
}

/// One member.
#[derive(Debug)]
pub(crate) struct Member<T> {
    /// The nick as the member spelled it.
    pub(crate) nick: String,
    /// The key of the member's room (see [`Roster::room_name`]).
    pub(crate) room: String,
    /// The owner's per-member data.
    pub(crate) data: T,
}

#[derive(Debug)]
struct Room<K> {
    /// The name as the member who created the room spelled it.
    name: String,
    members: HashSet<K, IdBuild>,
}

/// A nick is held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken;

/// Members, nicks and rooms. Every map is bounded by the number of members.
#[derive(Debug)]
pub(crate) struct Roster<K, T> {
    members: HashMap<K, Member<T>, IdBuild>,
    /// Folded nick -> member.
    nicks: HashMap<String, K>,
    /// Folded room name -> room; sorted, so `/rooms` needs no sort.
    rooms: BTreeMap<String, Room<K>>,
}

impl<K: Copy + Eq + Hash, T> Roster<K, T> {
    pub(crate) fn new() -> Self {
        Roster {
            members: HashMap::default(),
            nicks: HashMap::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// How many members there are.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// How many rooms there are (each has at least one member).
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub(crate) fn contains(&self, k: K) -> bool {
        self.members.contains_key(&k)
    }

    pub(crate) fn get(&self, k: K) -> Option<&Member<T>> {
        self.members.get(&k)
    }

    pub(crate) fn get_mut(&mut self, k: K) -> Option<&mut Member<T>> {
        self.members.get_mut(&k)
    }

    /// Who holds `nick`, compared case-insensitively.
    pub(crate) fn holder(&self, nick: &str) -> Option<K> {
        self.nicks.get(&fold(nick)).copied()
    }

    /// Adds a member with a free nick to a room (created if needed); returns
    /// the room's key.
    ///
    /// # Errors
    /// [`Taken`] if someone holds the nick (nothing changes).
    pub(crate) fn insert(
        &mut self,
        k: K,
        nick: &str,
        room: &str,
        data: T,
    ) -> Result<String, Taken> {
        debug_assert!(!self.members.contains_key(&k), "member added twice");
        let nick_key = fold(nick);
        if self.nicks.contains_key(&nick_key) {
            return Err(Taken);
        }
        self.nicks.insert(nick_key, k);
        let room_key = self.enter(k, room);
        self.members.insert(
            k,
            Member {
                nick: nick.to_string(),
                room: room_key.clone(),
                data,
            },
        );
        Ok(room_key)
    }

    /// Removes a member (its room too, if it was the last one there).
    pub(crate) fn remove(&mut self, k: K) -> Option<Member<T>> {
        let member = self.members.remove(&k)?;
        self.nicks.remove(&fold(&member.nick));
        self.exit(k, &member.room);
        Some(member)
    }

    /// Changes a member's nick; returns the old one. Changing only the case
    /// of one's own nick is allowed.
    ///
    /// # Errors
    /// [`Taken`] if someone else holds the nick (nothing changes).
    pub(crate) fn rename(&mut self, k: K, nick: &str) -> Result<String, Taken> {
        let new_key = fold(nick);
        match self.nicks.get(&new_key) {
            Some(&holder) if holder != k => return Err(Taken),
            _ => {}
        }
        let member = self.members.get_mut(&k).expect("renaming a member");
        let old = std::mem::replace(&mut member.nick, nick.to_string());
        self.nicks.remove(&fold(&old));
        self.nicks.insert(new_key, k);
        Ok(old)
    }

    /// Moves a member to `room` (created if needed; the old one is removed
    /// if now empty). Returns the old room's key, or `None` if the member is
    /// already there.
    pub(crate) fn move_to(&mut self, k: K, room: &str) -> Option<String> {
        let current = &self.members.get(&k).expect("moving a member").room;
        if *current == fold(room) {
            return None;
        }
        let old = current.clone();
        self.exit(k, &old);
        let new = self.enter(k, room);
        self.members.get_mut(&k).expect("moving a member").room = new;
        Some(old)
    }

    /// The display name of a room, by key.
    pub(crate) fn room_name(&self, key: &str) -> Option<&str> {
        self.rooms.get(key).map(|r| r.name.as_str())
    }

    /// How many members a room has (0 for a room that does not exist).
    pub(crate) fn room_len(&self, key: &str) -> usize {
        self.rooms.get(key).map_or(0, |r| r.members.len())
    }

    /// Up to `max` nicks of a room from `from` on (`""`: from the start),
    /// sorted case-insensitively. Costs one pass over the room, without
    /// sorting more than the page.
    pub(crate) fn who(&self, key: &str, from: &str, max: usize) -> Page<&str> {
        let Some(room) = self.rooms.get(key) else {
            return Page {
                items: Vec::new(),
                next: None,
            };
        };
        let mut nicks: Vec<&str> = room
            .members
            .iter()
            .filter_map(|k| self.members.get(k).map(|m| m.nick.as_str()))
            .filter(|nick| at_or_after(nick, from))
            .collect();
        let mut next = None;
        if nicks.len() > max {
            nicks.select_nth_unstable_by(max, |a, b| cmp_folded(a, b));
            next = Some((nicks[max], nicks.len() - max));
            nicks.truncate(max);
        }
        nicks.sort_unstable_by(|a, b| cmp_folded(a, b));
        Page { items: nicks, next }
    }

    /// Up to `max` rooms (name, member count) from `from` on (`""`: from
    /// the start), sorted case-insensitively.
    pub(crate) fn rooms(&self, from: &str, max: usize) -> Page<(&str, usize)> {
        fn entry<K>(r: &Room<K>) -> (&str, usize) {
            (r.name.as_str(), r.members.len())
        }
        let mut rest = self.rooms.range(fold(from)..).map(|(_, r)| r);
        let items = rest.by_ref().take(max).map(entry).collect();
        let next = rest.next().map(|r| (entry(r), 1 + rest.count()));
        Page { items, next }
    }

    /// Calls `f` for every member of a room but `except`, with mutable access
    /// to the member (to deliver to it).
    pub(crate) fn for_each_in(
        &mut self,
        key: &str,
        except: Option<K>,
        mut f: impl FnMut(K, &mut Member<T>),
    ) {
        let Some(room) = self.rooms.get(key) else {
            return;
        };
        for &k in &room.members {
            if Some(k) == except {
                continue;
            }
            if let Some(member) = self.members.get_mut(&k) {
                f(k, member);
            }
        }
    }

    /// Calls `f` for every other member of `k`'s room; as
    /// [`Roster::for_each_in`], without looking the room up by name.
    pub(crate) fn for_each_near(&mut self, k: K, mut f: impl FnMut(K, &mut Member<T>)) {
        let Some(room) = self.members.get(&k).and_then(|m| self.rooms.get(&m.room)) else {
            return;
        };
        for &other in &room.members {
            if other == k {
                continue;
            }
            if let Some(member) = self.members.get_mut(&other) {
                f(other, member);
            }
        }
    }

    /// Every member key, e.g. to close them all.
    pub(crate) fn keys(&self) -> Vec<K> {
        self.members.keys().copied().collect()
    }

    fn enter(&mut self, k: K, room: &str) -> String {
        let key = fold(room);
        self.rooms
            .entry(key.clone())
            .or_insert_with(|| Room {
                name: room.to_string(),
                members: HashSet::default(),
            })
            .members
            .insert(k);
        key
    }

    fn exit(&mut self, k: K, key: &str) {
        if let Some(room) = self.rooms.get_mut(key) {
            room.members.remove(&k);
            if room.members.is_empty() {
                self.rooms.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster() -> Roster<u32, ()> {
        Roster::new()
    }

    #[test]
    fn nicks_are_unique_case_insensitively() {
        let mut r = roster();
        r.insert(1, "alice", "lobby", ()).unwrap();
        assert_eq!(r.insert(2, "ALICE", "lobby", ()), Err(Taken));
        assert!(!r.contains(2));
        r.insert(2, "bob", "lobby", ()).unwrap();
        assert_eq!(r.rename(2, "Alice"), Err(Taken));
        assert_eq!(r.get(2).unwrap().nick, "bob");
        assert_eq!(r.holder("ALICE"), Some(1));
        assert_eq!(r.holder("Bob"), Some(2));
        assert_eq!(r.holder("carol"), None);
    }

    #[test]
    fn renaming_frees_the_old_nick_and_may_change_case() {
        let mut r = roster();
        r.insert(1, "alice", "lobby", ()).unwrap();
        assert_eq!(r.rename(1, "Alice").as_deref(), Ok("alice"));
        assert_eq!(r.rename(1, "al").as_deref(), Ok("Alice"));
        assert_eq!(r.holder("alice"), None);
        r.insert(2, "ALICE", "lobby", ()).unwrap();
        assert_eq!(r.holder("alice"), Some(2));
    }

    #[test]
    fn rooms_exist_while_someone_is_in_them() {
        let mut r = roster();
        r.insert(1, "a", "lobby", ()).unwrap();
        r.insert(2, "b", "lobby", ()).unwrap();
        assert_eq!(r.move_to(1, "Dev").as_deref(), Some("lobby"));
        assert_eq!(r.move_to(2, "dev").as_deref(), Some("lobby"));
        assert_eq!(r.room_count(), 1, "lobby is gone once empty");
        assert_eq!(r.room_name("dev"), Some("Dev"), "the creator's spelling");
        assert_eq!(r.move_to(2, "DEV"), None, "already there");
        r.remove(1);
        r.remove(2);
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.len(), 0);
        assert!(r.nicks.is_empty());
    }

    #[test]
    fn who_and_rooms_are_sorted_case_insensitively() {
        let mut r = roster();
        for (k, nick, room) in [
            (1, "carol", "lobby"),
            (2, "Bob", "lobby"),
            (3, "alice", "lobby"),
            (4, "dave", "zoo"),
            (5, "eve", "Attic"),
            (6, "frank", "attic"),
        ] {
            r.insert(k, nick, room, ()).unwrap();
        }
        let who = r.who("lobby", "", 10);
        assert_eq!(who.items, ["alice", "Bob", "carol"]);
        assert_eq!(who.next, None);
        assert!(r.who("nowhere", "", 10).items.is_empty());
        let rooms = r.rooms("", 10);
        assert_eq!(rooms.items, [("Attic", 2), ("lobby", 3), ("zoo", 1)]);
        assert_eq!(rooms.next, None);
    }

    #[test]
    fn who_and_rooms_come_a_page_at_a_time_and_every_entry_once() {
        let mut r = roster();
        for k in 0..250u32 {
            let room = format!("Room-{:03}", (k * 7) % 125);
            r.insert(k, &format!("N{:03}", (k * 13) % 250), &room, ())
                .unwrap();
        }
        assert_eq!(r.room_len("room-000"), 2);
        assert_eq!(r.room_len("nowhere"), 0);
        // Walk the rooms 40 at a time with the cursor each page names.
        let (mut from, mut seen, mut pages) = (String::new(), Vec::new(), 0);
        loop {
            let page = r.rooms(&from, 40);
            assert!(page.items.len() <= 40);
            seen.extend(page.items.iter().map(|(n, c)| (n.to_string(), *c)));
            pages += 1;
            match page.next {
                Some(((name, _), left)) => {
                    assert_eq!(left, 125 - seen.len(), "what is left after {from:?}");
                    from = name.to_ascii_lowercase();
                }
                None => break,
            }
        }
        assert_eq!(pages, 4);
        let want: Vec<(String, usize)> = (0..125).map(|i| (format!("Room-{i:03}"), 2)).collect();
        assert_eq!(seen, want);
        // The same for a room's members, from any spelling of the cursor.
        r.insert(1000, "zed", "big", ()).unwrap();
        for k in 0..250 {
            r.move_to(k, "big");
        }
        let page = r.who("big", "", 100);
        assert_eq!(page.items.len(), 100);
        assert_eq!(page.items[0], "N000");
        assert_eq!(page.items[99], "N099");
        assert_eq!(page.next, Some(("N100", 151)));
        let page = r.who("big", "n2", 100);
        assert_eq!(page.items.len(), 51);
        assert_eq!(page.items[0], "N200");
        assert_eq!(*page.items.last().unwrap(), "zed");
        assert_eq!(page.next, None);
        assert!(r.who("big", "zz", 100).items.is_empty());
        assert_eq!(
            r.rooms("zzz", 5),
            Page {
                items: vec![],
                next: None
            }
        );
    }

    #[test]
    fn lists_from_elsewhere_page_like_the_roster() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = page_nicks(names(&["bob", "Alice", "carol", "alice", "bob"]), 2);
        assert_eq!(p.items, ["Alice", "alice"]);
        assert_eq!(p.next, Some(("bob".to_string(), 2)));
        let p = page_nicks(names(&["b", "a"]), 2);
        assert_eq!((p.items, p.next), (names(&["a", "b"]), None));
        let rooms = vec![
            ("dev".to_string(), "Dev".to_string(), 2),
            ("a".to_string(), "a".to_string(), 1),
            ("lobby".to_string(), "lobby".to_string(), 5),
        ];
        let p = page_rooms(rooms.clone(), 2);
        assert_eq!(p.items, [("a".to_string(), 1), ("Dev".to_string(), 2)]);
        assert_eq!(p.next, Some((("lobby".to_string(), 5), 1)));
        assert_eq!(page_rooms(rooms, 3).next, None);
    }

    #[test]
    fn for_each_in_skips_the_sender_and_other_rooms() {
        let mut r: Roster<u32, Vec<&str>> = Roster::new();
        r.insert(1, "a", "lobby", vec![]).unwrap();
        r.insert(2, "b", "lobby", vec![]).unwrap();
        r.insert(3, "c", "dev", vec![]).unwrap();
        r.for_each_in("lobby", Some(1), |_, m| m.data.push("hi"));
        assert!(r.get(1).unwrap().data.is_empty());
        assert_eq!(r.get(2).unwrap().data, ["hi"]);
        assert!(r.get(3).unwrap().data.is_empty());
        r.for_each_near(2, |_, m| m.data.push("near"));
        assert_eq!(r.get(1).unwrap().data, ["near"]);
        assert_eq!(r.get(2).unwrap().data, ["hi"]);
        assert!(r.get(3).unwrap().data.is_empty());
        r.for_each_in("lobby", None, |_, m| m.data.push("all"));
        assert_eq!(r.get(2).unwrap().data, ["hi", "all"]);
    }
}
