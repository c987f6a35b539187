//! The host functions of the stats and metrics part of the table (ABI 1.4):
//! `stats_json`, and the handler-defined metrics (`metric_declare`,
//! `metric_series`, `metric_update`).

use super::*;

pub(super) unsafe extern "C" fn host_stats_json(
    ctx: *mut loopd_ctx,
    buf: *mut u8,
    cap: usize,
    len_out: *mut usize,
) -> i32 {
    if ctx.is_null() || len_out.is_null() || (buf.is_null() && cap > 0) {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: a non-NULL ctx is a live HostCtx; its fields are immutable
    // and the board is thread-safe, so any thread may read it.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    let Ok(text) = catch_unwind(AssertUnwindSafe(|| hc.stats_board.json())) else {
        return abi::LOOPD_ERR_IO;
    };
    // SAFETY: checked above; the caller lends `buf` and `len_out` for the
    // call, and `text` is ours.
    unsafe { copy_out(text.as_bytes(), buf, cap, len_out) }
}

/// Borrowed NUL-terminated UTF-8 strings: `None` for a NULL pointer or
/// bad UTF-8.
///
/// # Safety
/// `ptr` must be NULL, or point to `n` pointers each NULL or to a
/// NUL-terminated string, all valid for the call.
unsafe fn strings<'a>(ptr: *const *const c_char, n: u32) -> Option<Vec<&'a str>> {
    if n == 0 {
        return Some(Vec::new());
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller lends `n` pointers at `ptr`.
    let ptrs = unsafe { std::slice::from_raw_parts(ptr, n as usize) };
    ptrs.iter()
        .map(|&p| {
            if p.is_null() {
                None
            } else {
                // SAFETY: each non-NULL pointer is a NUL-terminated string lent for the call.
                unsafe { CStr::from_ptr(p) }.to_str().ok()
            }
        })
        .collect()
}

/// # Safety
/// `p` must be NULL or a NUL-terminated string valid for the call.
unsafe fn opt_str<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        Some("")
    } else {
        // SAFETY: per the contract.
        unsafe { CStr::from_ptr(p) }.to_str().ok()
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C" fn host_metric_declare(
    ctx: *mut loopd_ctx,
    kind: u32,
    name: *const c_char,
    help: *const c_char,
    label_names: *const *const c_char,
    label_count: u32,
    buckets: *const f64,
    bucket_count: u32,
    metric_out: *mut u64,
) -> i32 {
    use crate::metrics::MetricKind;
    if metric_out.is_null() || name.is_null() || (buckets.is_null() && bucket_count > 0) {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: the caller lends these strings for the call.
    let (Some(name), Some(help), Some(labels)) =
        (unsafe { opt_str(name) }, unsafe { opt_str(help) }, unsafe {
            strings(label_names, label_count)
        })
    else {
        return abi::LOOPD_ERR_INVALID;
    };
    let bounds: &[f64] = if bucket_count == 0 {
        &[]
    } else {
        // SAFETY: checked non-NULL; the caller lends `bucket_count` doubles.
        unsafe { std::slice::from_raw_parts(buckets, bucket_count as usize) }
    };
    let kind = match kind {
        abi::LOOPD_METRIC_COUNTER => MetricKind::Counter,
        abi::LOOPD_METRIC_GAUGE => MetricKind::Gauge,
        abi::LOOPD_METRIC_HISTOGRAM => MetricKind::Histogram,
        _ => return abi::LOOPD_ERR_INVALID,
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            let Some(i) = core.instances.get(inst) else {
                return abi::LOOPD_ERR_INVALID;
            };
            if i.life != crate::instance::Life::Creating {
                log::warn!(
                    target: "loopd",
                    "handler {}: metric `{name}` declared outside create; refused",
                    i.scope.name
                );
                return abi::LOOPD_ERR_INVALID;
            }
            let result = i
                .scope
                .metrics
                .borrow_mut()
                .declare(kind, name, help, &labels, bounds);
            match result {
                Ok(id) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *metric_out = id;
                    abi::LOOPD_OK
                }
                Err(e) => {
                    log::error!(target: "loopd", "handler {}: {e}", i.scope.name);
                    abi::LOOPD_ERR_INVALID
                }
            }
        })
    }
}

pub(super) unsafe extern "C" fn host_metric_series(
    ctx: *mut loopd_ctx,
    metric: u64,
    label_values: *const *const c_char,
    count: u32,
    series_out: *mut u64,
) -> i32 {
    if series_out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: the caller lends these strings for the call.
    let Some(values) = (unsafe { strings(label_values, count) }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            let Some(i) = core.instances.get(inst) else {
                return abi::LOOPD_ERR_INVALID;
            };
            let result = i.scope.metrics.borrow_mut().series(metric, &values);
            match result {
                Ok(id) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *series_out = id;
                    abi::LOOPD_OK
                }
                Err(e) if e.0.contains("series in one instance") => abi::LOOPD_ERR_LIMIT,
                Err(e) => {
                    log::debug!(target: "loopd", "handler {}: {e}", i.scope.name);
                    abi::LOOPD_ERR_INVALID
                }
            }
        })
    }
}

pub(super) unsafe extern "C" fn host_metric_update(
    ctx: *mut loopd_ctx,
    series: u64,
    op: u32,
    value: f64,
) -> i32 {
    use crate::metrics::Op;
    let op = match op {
        abi::LOOPD_METRIC_ADD => Op::Add,
        abi::LOOPD_METRIC_SET => Op::Set,
        abi::LOOPD_METRIC_OBSERVE => Op::Observe,
        _ => return abi::LOOPD_ERR_INVALID,
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| match core.instances.get(inst) {
            Some(i) if i.scope.metrics.borrow_mut().update(series, op, value) => abi::LOOPD_OK,
            _ => abi::LOOPD_ERR_INVALID,
        })
    }
}
