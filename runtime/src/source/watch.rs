//! Descriptors a handler owns, watched for readiness (ABI 1.3 `watch_fd`):
//! a pipe, an eventfd, inotify, a database client's socket.
//!
//! loopd never reads, writes or closes a watched descriptor. It registers
//! it oneshot: each event disarms it, and the loop re-arms it after
//! `on_fd` returns (one `epoll_ctl` per event: the price of never spinning
//! on a descriptor the handler closed or stopped serving). Before touching
//! the poller for a watch, loopd checks that the descriptor number still
//! names the file it was given (device and inode): a descriptor closed
//! under a watch, whose number now belongs to something else, is detected
//! and the watch dropped with a warning, instead of re-arming or removing
//! another file's registration.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

use loopd_handler_api::abi;

use crate::core::Core;
use crate::event_loop::Ready;
use crate::instance::InstanceId;
use crate::source::Source;

/// A watched descriptor.
#[derive(Debug)]
pub(crate) struct Watch {
    fd: RawFd,
    /// (device, inode) of the file when the watch was made.
    ident: (u64, u64),
    pub(crate) instance: InstanceId,
    user_data: u64,
    /// (readable, writable) asked for.
    interest: (bool, bool),
    /// Registered and waiting for an event (oneshot: an event disarms it).
    armed: bool,
}

/// What the dispatcher delivers for a watch event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FdEvent {
    pub(crate) instance: InstanceId,
    pub(crate) user_data: u64,
    /// `LOOPD_FD_*` bits.
    pub(crate) events: u32,
}

/// The (device, inode) of the file behind `fd`.
fn ident(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: the File is never dropped (ManuallyDrop), so the descriptor
    // is only borrowed for the fstat; an fd that is not open fails (EBADF).
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let meta = f.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

fn interest_of(bits: u32) -> Option<(bool, bool)> {
    if bits & !(abi::LOOPD_FD_READABLE | abi::LOOPD_FD_WRITABLE) != 0 {
        return None;
    }
    Some((
        bits & abi::LOOPD_FD_READABLE != 0,
        bits & abi::LOOPD_FD_WRITABLE != 0,
    ))
}

impl Watch {
    /// Whether the descriptor number still names the file it was given.
    fn still_ours(&self) -> bool {
        ident(self.fd).is_ok_and(|id| id == self.ident)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: only called after `still_ours`: the descriptor is open
        // and is the handler's, which keeps it open while watched.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

/// The watch `id` of `instance`.
fn owned(
    sources: &mut crate::registry::Registry<Source>,
    instance: InstanceId,
    id: u64,
) -> Option<&mut Watch> {
    match sources.get_mut(id) {
        Some(Source::Watch(w)) if w.instance == instance => Some(w),
        _ => None,
    }
}

/// Drops a watch whose descriptor was closed (or replaced) under it.
fn drop_dead(core: &mut Core, id: u64) {
    if let Some(Source::Watch(w)) = core.sources.remove(id) {
        log::warn!(
            "{}: fd {} was closed before its watch {id} was removed; the watch is dropped \
             (remove a watch before closing its fd)",
            core.instances.name(w.instance),
            w.fd
        );
    }
}

/// The host's `watch_fd`.
pub(crate) fn add(
    core: &mut Core,
    instance: InstanceId,
    fd: RawFd,
    bits: u32,
    user_data: u64,
) -> Result<u64, i32> {
    let interest = interest_of(bits).ok_or(abi::LOOPD_ERR_INVALID)?;
    if fd < 0 {
        return Err(abi::LOOPD_ERR_INVALID);
    }
    let ident = ident(fd).map_err(|_| abi::LOOPD_ERR_INVALID)?;
    let id = core.sources.insert_with(|_| {
        Source::Watch(Watch {
            fd,
            ident,
            instance,
            user_data,
            interest,
            armed: true,
        })
    });
    // SAFETY: the handler keeps `fd` open until it removes the watch (the
    // documented contract); a violation is detected by `still_ours` before
    // loopd touches the registration again, and the kernel drops the
    // registration of a closed descriptor by itself.
    let added = unsafe { core.shared.poll.add_oneshot(fd, id, interest.0, interest.1) };
    if let Err(e) = added {
        core.sources.remove(id);
        log::debug!(
            "{}: watch_fd({fd}): the poller refused it: {e}",
            core.instances.name(instance)
        );
        return Err(abi::LOOPD_ERR_IO);
    }
    Ok(id)
}

/// The host's `watch_modify`: new interest, re-armed.
pub(crate) fn modify(core: &mut Core, instance: InstanceId, id: u64, bits: u32) -> i32 {
    let Some(interest) = interest_of(bits) else {
        return abi::LOOPD_ERR_INVALID;
    };
    let Some(w) = owned(&mut core.sources, instance, id) else {
        return abi::LOOPD_ERR_NO_SUCH_CONN;
    };
    if !w.still_ours() {
        drop_dead(core, id);
        return abi::LOOPD_ERR_CLOSED;
    }
    w.interest = interest;
    let result = core.shared.poll.rearm(w.fd(), id, interest.0, interest.1);
    match result {
        Ok(()) => {
            w.armed = true;
            abi::LOOPD_OK
        }
        Err(e) => {
            log::debug!("watch {id}: re-arming fd {}: {e}", w.fd);
            abi::LOOPD_ERR_IO
        }
    }
}

/// The host's `watch_remove`.
pub(crate) fn remove(core: &mut Core, instance: InstanceId, id: u64) -> i32 {
    let Some(w) = owned(&mut core.sources, instance, id) else {
        return abi::LOOPD_ERR_NO_SUCH_CONN;
    };
    if w.still_ours() {
        if let Err(e) = core.shared.poll.delete(w.fd()) {
            log::debug!("watch {id}: removing fd {} from the poller: {e}", w.fd);
        }
        core.sources.remove(id);
    } else {
        drop_dead(core, id);
    }
    abi::LOOPD_OK
}

/// Removes every watch of `instance` (it is being destroyed).
pub(crate) fn remove_all(core: &mut Core, instance: InstanceId) {
    for id in core.sources.ids() {
        if matches!(core.sources.get(id), Some(Source::Watch(w)) if w.instance == instance) {
            remove(core, instance, id);
        }
    }
}

/// A readiness event for watch `id`: what to deliver (`None`: nothing the
/// handler asked for). The oneshot registration is disarmed now.
pub(crate) fn ready(core: &mut Core, id: u64, r: &Ready) -> Option<FdEvent> {
    let Some(Source::Watch(w)) = core.sources.get_mut(id) else {
        return None;
    };
    w.armed = false;
    let mut events = 0;
    if r.readable && w.interest.0 {
        events |= abi::LOOPD_FD_READABLE;
    }
    if r.writable && w.interest.1 {
        events |= abi::LOOPD_FD_WRITABLE;
    }
    if r.hup || r.err {
        events |= abi::LOOPD_FD_HUP;
    }
    Some(FdEvent {
        instance: w.instance,
        user_data: w.user_data,
        events,
    })
    .filter(|e| e.events != 0)
}

/// After `on_fd` returned: re-arms the watch unless the handler changed or
/// removed it meanwhile, or it reported a hang-up (then it stays parked
/// until `watch_modify`).
pub(crate) fn after_event(core: &mut Core, id: u64, events: u32) {
    let Some(Source::Watch(w)) = core.sources.get_mut(id) else {
        return;
    };
    if w.armed || events & abi::LOOPD_FD_HUP != 0 {
        return;
    }
    if !w.still_ours() {
        drop_dead(core, id);
        return;
    }
    match core
        .shared
        .poll
        .rearm(w.fd(), id, w.interest.0, w.interest.1)
    {
        Ok(()) => w.armed = true,
        Err(e) => log::debug!("watch {id}: re-arming fd {}: {e}", w.fd),
    }
}
