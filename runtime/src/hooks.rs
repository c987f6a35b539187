//! The only code that calls into a plugin's vtable: one safe method per
//! hook.
//!
//! Every method looks the instance up by id, refuses to call one that was
//! destroyed (or is gone), copies out the hook pointer, the instance's
//! context and pointer, and releases the loop state before the call: a hook
//! never runs while `Core` is borrowed, so the host functions it calls can
//! borrow it. A missing hook (`NULL`) gets the ABI's documented default.
//!
//! What each hook may rely on (`loopd.h` is the contract): byte and info
//! pointers are borrowed for the call only; a connection id passed to a
//! hook is live for the call; `on_close` is the last call for its state;
//! `destroy` is called once, after every `on_close` and timer of the
//! instance. Panics are the SDK's to catch (`catch_unwind` in its
//! trampolines); a C hook cannot unwind.

use std::cell::RefCell;
use std::ffi::{c_void, CStr};

use loopd_handler_api::abi::{self, loopd_addr, loopd_conn_info, loopd_ctx, loopd_listen_info};

use crate::core::Core;
use crate::instance::{InstanceId, Life};
use crate::spec::Maker;

/// The hooks of a runtime's instances.
#[derive(Clone, Copy)]
pub(crate) struct Hooks<'a>(pub(crate) &'a RefCell<Core>);

impl std::fmt::Debug for Hooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

type Target<F> = (F, *mut loopd_ctx, *mut c_void);

impl Hooks<'_> {
    /// The hook `pick` chooses of a callable instance, with its context and
    /// pointer; the borrow of the loop state ends before this returns.
    fn target<F: Copy>(
        &self,
        inst: InstanceId,
        pick: impl Fn(&abi::loopd_vtable) -> Option<F>,
    ) -> Option<Target<F>> {
        let core = self.0.borrow();
        let i = core.instances.get(inst)?;
        if !i.callable() {
            return None;
        }
        Some((pick(&i.plugin.vtable)?, i.ctx.as_raw(), i.ptr))
    }

    /// `create`: makes the handler's instance from its name and JSON config
    /// (or with `make`, for a linked handler the program builds itself).
    /// `Ok(pointer)` (NULL without a `create` hook); `Err(message)` with the
    /// handler's own message, or the status when it gave none.
    pub(crate) fn create(
        &self,
        inst: InstanceId,
        name: &CStr,
        config_json: &CStr,
        make: Option<&Maker>,
    ) -> Result<*mut c_void, String> {
        let (target, ctx) = {
            let core = self.0.borrow();
            let Some(i) = core.instances.get(inst) else {
                return Err("the instance is gone".to_string());
            };
            debug_assert_eq!(i.life, Life::Creating);
            (
                i.plugin.vtable.create.map(|f| (f, i.ctx.as_raw())),
                i.ctx.as_raw(),
            )
        };
        if let Some(make) = make {
            // A linked handler the program builds itself (`HandlerSpec::with`).
            return make(crate::host::host_api(), ctx);
        }
        let Some((create, ctx)) = target else {
            return Ok(std::ptr::null_mut());
        };
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let mut err = vec![0u8; 1024];
        // SAFETY: a checked vtable; every pointer passed is valid for the
        // call, and `err` has `err.len()` writable bytes.
        let status = unsafe {
            create(
                crate::host::host_api(),
                ctx,
                name.as_ptr(),
                config_json.as_ptr(),
                &mut ptr,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if status >= 0 {
            return Ok(ptr);
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        let msg = String::from_utf8_lossy(&err[..end]).into_owned();
        Err(if msg.is_empty() {
            format!(
                "status {status} ({}), and the handler gave no message",
                abi::status_str(status)
            )
        } else {
            msg
        })
    }

    /// `destroy`, once: the instance is marked destroyed first, so no hook
    /// of it runs again (not even from a destroy that re-enters).
    pub(crate) fn destroy(&self, inst: InstanceId) {
        let target = {
            let mut core = self.0.borrow_mut();
            let Some(i) = core.instances.get_mut(inst) else {
                return;
            };
            if !matches!(i.life, Life::Live | Life::Draining) {
                return;
            }
            i.life = Life::Destroyed;
            i.plugin.vtable.destroy.map(|f| (f, i.ctx.as_raw(), i.ptr))
        };
        if let Some((f, ctx, ptr)) = target {
            // SAFETY: a checked vtable; called once, after every on_close.
            unsafe { f(ctx, ptr) }
        }
    }

    /// `on_listen` (ABI 1.1): a listener is open.
    pub(crate) fn on_listen(&self, inst: InstanceId, id: u64, info: &loopd_listen_info) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_listen) {
            // SAFETY: a checked vtable; `info` and its URL are valid for the call.
            unsafe { f(ctx, ptr, id, info) }
        }
    }

    /// `on_open`: a connection opened; the hook may store its state.
    /// Negative refuses the connection.
    pub(crate) fn on_open(
        &self,
        inst: InstanceId,
        id: u64,
        info: &loopd_conn_info,
        state: &mut *mut c_void,
    ) -> i32 {
        match self.target(inst, |v| v.on_open) {
            // SAFETY: a checked vtable; `info` and `state` are valid for the call.
            Some((f, ctx, ptr)) => unsafe { f(ctx, ptr, id, info, state) },
            None => abi::LOOPD_OK,
        }
    }

    /// `on_data`: one frame, borrowed for the call. Negative: the handler
    /// failed, close the connection.
    pub(crate) fn on_data(
        &self,
        inst: InstanceId,
        id: u64,
        state: *mut c_void,
        data: &[u8],
    ) -> i32 {
        match self.target(inst, |v| v.on_data) {
            // SAFETY: a checked vtable; `data` is borrowed for the call.
            Some((f, ctx, ptr)) => unsafe { f(ctx, ptr, id, state, data.as_ptr(), data.len()) },
            None => abi::LOOPD_OK,
        }
    }

    /// `on_partial` (ABI 1.1): a last line without `\n` at EOF. `false`
    /// when the handler has no such hook (the line then goes to `on_data`).
    pub(crate) fn on_partial(
        &self,
        inst: InstanceId,
        id: u64,
        state: *mut c_void,
        data: &[u8],
    ) -> bool {
        match self.target(inst, |v| v.on_partial) {
            Some((f, ctx, ptr)) => {
                // SAFETY: a checked vtable; `data` is borrowed for the call.
                unsafe { f(ctx, ptr, id, state, data.as_ptr(), data.len()) };
                true
            }
            None => false,
        }
    }

    /// `on_oversize` (ABI 1.1): a frame over `max_frame`; `None` without the
    /// hook, else its verdict (`LOOPD_OVERSIZE_SKIP` or close).
    pub(crate) fn on_oversize(
        &self,
        inst: InstanceId,
        id: u64,
        state: *mut c_void,
        size: usize,
        max: usize,
    ) -> Option<i32> {
        let (f, ctx, ptr) = self.target(inst, |v| v.on_oversize)?;
        // SAFETY: a checked vtable; plain values.
        Some(unsafe { f(ctx, ptr, id, state, size as u64, max as u64) })
    }

    /// `on_eof`: the peer stopped sending. Without the hook the connection
    /// closes once its output is flushed (`LOOPD_EOF_CLOSE`).
    pub(crate) fn on_eof(&self, inst: InstanceId, id: u64, state: *mut c_void) -> i32 {
        match self.target(inst, |v| v.on_eof) {
            // SAFETY: a checked vtable; plain values.
            Some((f, ctx, ptr)) => unsafe { f(ctx, ptr, id, state) },
            None => abi::LOOPD_EOF_CLOSE,
        }
    }

    /// `on_writable`: the output queue drained below the low watermark
    /// after a refused send.
    pub(crate) fn on_writable(&self, inst: InstanceId, id: u64, state: *mut c_void) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_writable) {
            // SAFETY: a checked vtable; plain values.
            unsafe { f(ctx, ptr, id, state) }
        }
    }

    /// `on_close`: the last call for `state`.
    pub(crate) fn on_close(&self, inst: InstanceId, id: u64, state: *mut c_void, reason: i32) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_close) {
            // SAFETY: a checked vtable; plain values; the last call for `state`.
            unsafe { f(ctx, ptr, id, state, reason) }
        }
    }

    /// `on_datagram`: one datagram and its sender, borrowed for the call.
    pub(crate) fn on_datagram(&self, inst: InstanceId, id: u64, peer: &loopd_addr, data: &[u8]) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_datagram) {
            // SAFETY: a checked vtable; `peer` and `data` are borrowed for the call.
            unsafe { f(ctx, ptr, id, peer, data.as_ptr(), data.len()) }
        }
    }

    /// Whether the instance takes datagrams in batches (`on_datagrams`).
    pub(crate) fn takes_batches(&self, inst: InstanceId) -> bool {
        self.target(inst, |v| v.on_datagrams).is_some()
    }

    /// `on_datagrams` (ABI 1.4): the datagrams of one receive on socket
    /// `id`, borrowed for the call (`msgs` non-empty; nothing called when it
    /// is empty).
    pub(crate) fn on_datagrams(&self, inst: InstanceId, id: u64, msgs: &mut [abi::loopd_datagram]) {
        if msgs.is_empty() {
            return;
        }
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_datagrams) {
            // SAFETY: a checked vtable; `msgs` and the bytes each points at
            // are borrowed for the call. From a unique borrow: the plugin
            // may hand the same array to send_datagrams, which writes the
            // statuses (loopd.h allows it).
            unsafe { f(ctx, ptr, id, msgs.as_mut_ptr(), msgs.len()) }
        }
    }

    /// `on_timer`: a timer the instance set fired.
    pub(crate) fn on_timer(&self, inst: InstanceId, id: u64, user_data: u64) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_timer) {
            // SAFETY: a checked vtable; plain values.
            unsafe { f(ctx, ptr, id, user_data) }
        }
    }

    /// `on_message` (ABI 1.3): one posted message, borrowed for the call.
    pub(crate) fn on_message(&self, inst: InstanceId, msg: &[u8]) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_message) {
            // SAFETY: a checked vtable; `msg` is borrowed for the call.
            unsafe { f(ctx, ptr, msg.as_ptr(), msg.len()) }
        }
    }

    /// `on_fd` (ABI 1.3): a watched descriptor is ready (`LOOPD_FD_*` bits).
    pub(crate) fn on_fd(&self, inst: InstanceId, watch: u64, user_data: u64, events: u32) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_fd) {
            // SAFETY: a checked vtable; plain values.
            unsafe { f(ctx, ptr, watch, user_data, events) }
        }
    }

    /// `on_shutdown`: a graceful shutdown began.
    pub(crate) fn on_shutdown(&self, inst: InstanceId) {
        if let Some((f, ctx, ptr)) = self.target(inst, |v| v.on_shutdown) {
            // SAFETY: a checked vtable; plain values.
            unsafe { f(ctx, ptr) }
        }
    }
}
