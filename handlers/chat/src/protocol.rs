//! The chat protocol's pure parts: which lines are text, what a line from a
//! client means, and which names are valid. No I/O here, so every rule is
//! unit-tested directly.

use std::borrow::Cow;

/// Longest nick or room name, in bytes (= characters: names are ASCII).
pub(crate) const MAX_NAME: usize = 32;

/// Whether `name` is a valid nick or room name: 1 to [`MAX_NAME`] characters
/// from `[A-Za-z0-9_-]`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What one line from a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input<'a> {
    /// An empty or all-blank line: ignored.
    Empty,
    /// Text for the room.
    Say(&'a str),
    /// `/nick NAME` (NAME not validated yet).
    Nick(&'a str),
    /// `/join ROOM` (ROOM not validated yet).
    Join(&'a str),
    /// `/who [FROM]`: FROM is "" for the start of the list.
    Who(&'a str),
    /// `/rooms [FROM]`: FROM is "" for the start of the list.
    Rooms(&'a str),
    /// `/me ACTION`.
    Me(&'a str),
    /// `/quit`.
    Quit,
    /// `/help`.
    Help,
    /// A known command used wrongly; holds its synopsis, e.g. `/nick NAME`.
    Usage(&'static str),
    /// An unknown command; holds the command word as typed, slash included.
    Unknown(&'a str),
}

/// Why a line was refused before it meant anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLine {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The line holds a control character other than tab (an escape
    /// sequence would reach everyone else's terminal), or a line or
    /// paragraph separator (U+2028, U+2029: a line break to some clients).
    Control,
}

/// Characters removed from every line before it means anything: they are
/// invisible, and can make text look other than it is ("Trojan Source",
/// CVE-2021-42574). Bidirectional embeddings and overrides (U+202A to
/// U+202E) and isolates (U+2066 to U+2069) reorder what follows them on
/// screen; zero-width spaces, (non-)joiners and the word joiner (U+200B to
/// U+200D, U+2060) and the byte order mark / zero-width no-break space
/// (U+FEFF) hide inside words. Nicks and room names cannot hold them (they
/// are ASCII).
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FEFF}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// Checks that a line is text and removes the invisible characters
/// ([`is_invisible`]); borrows when there are none.
pub(crate) fn clean(line: &[u8]) -> Result<Cow<'_, str>, BadLine> {
    let line = std::str::from_utf8(line).map_err(|_| BadLine::NotUtf8)?;
    if line
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(BadLine::Control);
    }
    if line.chars().any(is_invisible) {
        Ok(Cow::Owned(
            line.chars().filter(|&c| !is_invisible(c)).collect(),
        ))
    } else {
        Ok(Cow::Borrowed(line))
    }
}

/// Space or tab: what separates a command from its argument.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// What a line (without its `\n` and `\r`) means, once [`clean`]: a line
/// starting with `/` is a command; commands are case-insensitive. `//text`
/// says `/text` literally. Anything else is text for the room.
pub(crate) fn parse(line: &str) -> Input<'_> {
    if line.trim_matches(is_blank).is_empty() {
        return Input::Empty;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Say(line);
    };
    if command.starts_with('/') {
        return Input::Say(command);
    }
    let (word, arg) = match command.find(is_blank) {
        Some(at) => (&command[..at], command[at..].trim_matches(is_blank)),
        None => (command, ""),
    };
    let usage_if = |wrong: bool, input, synopsis: &'static str| {
        if wrong {
            Input::Usage(synopsis)
        } else {
            input
        }
    };
    let (missing, extra) = (arg.is_empty(), !arg.is_empty());
    // One word at most: FROM is a name (or where one would sort).
    let two_words = arg.contains(is_blank);
    match word.to_ascii_lowercase().as_str() {
        "nick" => usage_if(missing, Input::Nick(arg), "/nick NAME"),
        "join" => usage_if(missing, Input::Join(arg), "/join ROOM"),
        "me" => usage_if(missing, Input::Me(arg), "/me ACTION"),
        "who" => usage_if(two_words, Input::Who(arg), "/who [FROM]"),
        "rooms" => usage_if(two_words, Input::Rooms(arg), "/rooms [FROM]"),
        "quit" => usage_if(extra, Input::Quit, "/quit"),
        "help" => usage_if(extra, Input::Help, "/help"),
        _ => Input::Unknown(&line[..1 + word.len()]),
    }
}

/// The `/help` text, one `* `-prefixed line each, `\n`-terminated.
pub(crate) const HELP: &str = "\
* commands:
*   /nick NAME     change your nick (1-32 characters from A-Z a-z 0-9 _ -)
*   /join ROOM     leave this room and join ROOM (same characters; created if needed)
*   /who [FROM]    list who is in this room (a page at a time; FROM: where the page starts)
*   /rooms [FROM]  list the rooms and how many are in each (a page at a time, the same way)
*   /me ACTION     tell the room what you are doing (shown as + nick ACTION)
*   /quit          leave
*   /help          this list
* lines sent faster than the rate limit wait their turn: the server reads them more slowly, none is lost
* any other line goes to everyone else in the room; start it with // to say a line that begins with /
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Input<'_> {
        assert!(matches!(clean(line.as_bytes()), Ok(Cow::Borrowed(_))));
        parse(line)
    }

    #[test]
    fn names_are_1_to_32_of_the_allowed_characters() {
        for ok in [
            "a",
            "Z",
            "0",
            "_",
            "-",
            "guest-1",
            "Alice_B-2",
            &"x".repeat(32),
        ] {
            assert!(valid_name(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            &"x".repeat(33),
            "a b",
            "a.b",
            "a/b",
            "é",
            "nick!",
            " a",
            "a\t",
            "ünïcode",
        ] {
            assert!(!valid_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn plain_text_is_said_as_is() {
        assert_eq!(p("hello world"), Input::Say("hello world"));
        assert_eq!(p("  indented"), Input::Say("  indented"));
        assert_eq!(p("tab\tinside"), Input::Say("tab\tinside"));
        assert_eq!(p("héllo ✓ 日本"), Input::Say("héllo ✓ 日本"));
        assert_eq!(p(" /nick x"), Input::Say(" /nick x"));
    }

    #[test]
    fn a_double_slash_says_a_line_that_starts_with_a_slash() {
        assert_eq!(p("//nick is a command"), Input::Say("/nick is a command"));
        assert_eq!(p("//"), Input::Say("/"));
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(p(""), Input::Empty);
        assert_eq!(p("   "), Input::Empty);
        assert_eq!(p(" \t "), Input::Empty);
    }

    #[test]
    fn commands_take_their_argument_trimmed() {
        assert_eq!(p("/nick alice"), Input::Nick("alice"));
        assert_eq!(p("/nick   alice  "), Input::Nick("alice"));
        assert_eq!(p("/nick\talice"), Input::Nick("alice"));
        assert_eq!(p("/join dev"), Input::Join("dev"));
        assert_eq!(p("/me waves at everyone"), Input::Me("waves at everyone"));
        // Validation of the name is the caller's: a space inside survives.
        assert_eq!(p("/nick a b"), Input::Nick("a b"));
    }

    #[test]
    fn commands_are_case_insensitive() {
        assert_eq!(p("/NICK Bob"), Input::Nick("Bob"));
        assert_eq!(p("/Who"), Input::Who(""));
        assert_eq!(p("/QUIT"), Input::Quit);
    }

    #[test]
    fn commands_without_arguments() {
        assert_eq!(p("/who"), Input::Who(""));
        assert_eq!(p("/rooms"), Input::Rooms(""));
        assert_eq!(p("/quit"), Input::Quit);
        assert_eq!(p("/help"), Input::Help);
        assert_eq!(p("/help  "), Input::Help);
    }

    #[test]
    fn a_missing_or_extra_argument_is_a_usage_error() {
        assert_eq!(p("/nick"), Input::Usage("/nick NAME"));
        assert_eq!(p("/nick   "), Input::Usage("/nick NAME"));
        assert_eq!(p("/join"), Input::Usage("/join ROOM"));
        assert_eq!(p("/me"), Input::Usage("/me ACTION"));
        assert_eq!(p("/who a b"), Input::Usage("/who [FROM]"));
        assert_eq!(p("/rooms x\ty"), Input::Usage("/rooms [FROM]"));
        assert_eq!(p("/quit now"), Input::Usage("/quit"));
        assert_eq!(p("/help me"), Input::Usage("/help"));
    }

    #[test]
    fn who_and_rooms_take_where_the_page_starts() {
        assert_eq!(p("/who guest-5"), Input::Who("guest-5"));
        assert_eq!(p("/rooms  dev "), Input::Rooms("dev"));
        assert_eq!(p("/ROOMS m"), Input::Rooms("m"));
    }

    #[test]
    fn unknown_commands_name_the_word_as_typed() {
        assert_eq!(p("/x"), Input::Unknown("/x"));
        assert_eq!(p("/Dance wildly"), Input::Unknown("/Dance"));
        assert_eq!(p("/"), Input::Unknown("/"));
        assert_eq!(p("/ nick"), Input::Unknown("/"));
        assert_eq!(p("/nickname bob"), Input::Unknown("/nickname"));
        assert_eq!(p("/ünï"), Input::Unknown("/ünï"));
    }

    #[test]
    fn invalid_utf8_and_control_characters_are_refused() {
        let bad = |b: &[u8]| clean(b).unwrap_err();
        assert_eq!(bad(b"caf\xe9"), BadLine::NotUtf8);
        assert_eq!(bad(b"\xff/nick x"), BadLine::NotUtf8);
        assert_eq!(bad(b"red \x1b[31m text"), BadLine::Control);
        assert_eq!(bad(b"bell\x07"), BadLine::Control);
        assert_eq!(bad(b"nul\0"), BadLine::Control);
        assert_eq!(bad(b"del\x7f"), BadLine::Control);
        assert_eq!(bad(b"a\rb"), BadLine::Control);
        // C1 controls (U+0080..U+009F) too, and the Unicode line breaks.
        assert_eq!(bad("c1\u{9b}31m".as_bytes()), BadLine::Control);
        assert_eq!(bad("one\u{2028}* alice left".as_bytes()), BadLine::Control);
        assert_eq!(bad("one\u{2029}two".as_bytes()), BadLine::Control);
    }

    #[test]
    fn bidi_controls_and_zero_width_characters_are_removed() {
        let c = |s: &str| clean(s.as_bytes()).unwrap().into_owned();
        // The Trojan Source override: shown reversed without the removal.
        assert_eq!(
            c("access\u{202E}nimda\u{202C} granted"),
            "accessnimda granted"
        );
        for ch in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}',
        ] {
            assert_eq!(c(&format!("{ch}a{ch}b{ch}")), "ab", "U+{:04X}", ch as u32);
        }
        // Neighbours stay: LRM/RLM (U+200E/F), a non-breaking space, text.
        assert_eq!(
            c("a\u{200E}\u{200F}\u{a0}é✓日本"),
            "a\u{200E}\u{200F}\u{a0}é✓日本"
        );
        // A line of nothing but invisible characters is blank.
        assert_eq!(parse(&c("\u{200B}\u{FEFF} \u{202E}")), Input::Empty);
        // A BOM in front of a command does not hide it.
        assert_eq!(parse(&c("\u{FEFF}/who")), Input::Who(""));
        assert!(!valid_name("a\u{202E}b"));
    }

    #[test]
    fn help_lines_are_all_notices() {
        assert!(HELP.ends_with('\n'));
        assert!(HELP.lines().all(|l| l.starts_with("* ")));
        for cmd in ["/nick", "/join", "/who", "/rooms", "/me", "/quit", "/help"] {
            assert!(HELP.contains(cmd), "help does not mention {cmd}");
        }
    }
}
