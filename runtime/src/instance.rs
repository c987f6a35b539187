//! Handler instances: one record per `[[handler]]` entry (or
//! `HandlerSpec`), in a generation-tagged table like connections.
//!
//! Connections, listeners, datagram sockets and timers name their instance
//! by its [`InstanceId`], never by a position: a record can be replaced
//! while the old one's connections drain, and an id that outlived its
//! instance is refused instead of reaching the next occupant of the slot.

use std::ffi::c_void;
use std::rc::Rc;

use crate::config::FramingKind;
use crate::host::HostCtx;
use crate::plugin::Plugin;
use crate::registry::Registry;
use crate::stats::Scope;

/// A generation-tagged instance id (`(generation << 32) | slot`; 0 is never one).
pub(crate) type InstanceId = u64;

/// What an instance's connections and sockets start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) framing: FramingKind,
    pub(crate) max_frame: usize,
    pub(crate) high_watermark: usize,
    pub(crate) low_watermark: usize,
    /// `broadcast = true`: `SO_BROADCAST` on the instance's UDP sockets.
    pub(crate) broadcast: bool,
    /// The mailbox's bounds: messages, and bytes in all of them.
    pub(crate) mailbox_messages: usize,
    pub(crate) mailbox_bytes: usize,
    /// Most open connections of the instance (`None`: only the runtime's).
    pub(crate) max_connections: Option<usize>,
    /// Most open connections per peer address (0: no limit).
    pub(crate) max_per_peer: usize,
    /// Close connections with no traffic for this long.
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// `SO_REUSEADDR` on the instance's UDP sockets.
    pub(crate) reuse_address: bool,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    /// Its `create` has not returned yet (or failed).
    Creating,
    /// Serving.
    Live,
    /// Replaced or removed by a reload: its connections are served until
    /// they close (or the drain timeout), then it is destroyed.
    Draining,
    /// `destroy` was called: no hook runs again.
    Destroyed,
}

/// One handler instance.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) plugin: Plugin,
    /// What `create` stored (NULL if the plugin has no `create`).
    pub(crate) ptr: *mut c_void,
    /// The context handed to the plugin; boxed so its address is stable.
    pub(crate) ctx: Box<HostCtx>,
    pub(crate) settings: Settings,
    /// The instance's name and counters; its connections hold it too.
    /// Its live connection count is `scope.counters.active`.
    pub(crate) scope: Rc<Scope>,
    pub(crate) life: Life,
    /// The certificate and key of its `tls://` listeners.
    pub(crate) tls: Option<TlsServer>,
    /// The CAs its outbound `tls://` connections trust (`tls_ca`).
    pub(crate) tls_client: Option<TlsClient>,
}

/// A TLS client setup ([`crate::tls`]); nothing without the `tls` feature.
#[cfg(feature = "tls")]
pub(crate) type TlsClient = crate::tls::ClientConfig;
/// A TLS client setup; nothing without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(crate) type TlsClient = std::convert::Infallible;

/// A TLS server setup ([`crate::tls`]); nothing without the `tls` feature.
#[cfg(feature = "tls")]
pub(crate) type TlsServer = crate::tls::ServerConfig;
/// A TLS server setup; nothing without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(crate) type TlsServer = std::convert::Infallible;

impl Instance {
    pub(crate) fn name(&self) -> &str {
        &self.scope.name
    }

    /// Whether hooks may be called.
    pub(crate) fn callable(&self) -> bool {
        self.life != Life::Destroyed
    }
}

/// Every instance of a runtime, in creation order.
#[derive(Debug)]
pub(crate) struct Instances {
    table: Registry<Instance>,
    order: Vec<InstanceId>,
}

impl Instances {
    pub(crate) fn new() -> Instances {
        Instances {
            table: Registry::new(),
            order: Vec::new(),
        }
    }

    /// Adds the record `make` builds from its own id.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(InstanceId) -> Instance) -> InstanceId {
        let id = self.table.insert_with(make);
        self.order.push(id);
        id
    }

    /// Removes a record (one whose `create` failed).
    pub(crate) fn remove(&mut self, id: InstanceId) -> Option<Instance> {
        self.order.retain(|&i| i != id);
        self.table.remove(id)
    }

    pub(crate) fn get(&self, id: InstanceId) -> Option<&Instance> {
        self.table.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: InstanceId) -> Option<&mut Instance> {
        self.table.get_mut(id)
    }

    /// Ids in creation order.
    pub(crate) fn ids(&self) -> &[InstanceId] {
        &self.order
    }

    /// The instance's name, for messages (`?` for an id that is gone).
    pub(crate) fn name(&self, id: InstanceId) -> &str {
        self.get(id).map_or("?", Instance::name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.order.iter().filter_map(|&id| self.get(id))
    }
}

impl Default for Settings {
    fn default() -> Settings {
        let rt = crate::config::RuntimeConfig::default();
        Settings {
            framing: FramingKind::Raw,
            max_frame: rt.max_frame,
            high_watermark: rt.output_high_watermark,
            low_watermark: rt.output_low_watermark,
            broadcast: false,
            mailbox_messages: 4096,
            mailbox_bytes: 4 << 20,
            max_connections: None,
            max_per_peer: 0,
            idle_timeout: None,
            reuse_address: false,
        }
    }
}

/// An instance record with no hooks, for unit tests of the loop's parts.
#[cfg(test)]
pub(crate) fn test_instance(
    core: &mut crate::core::Core,
    name: &str,
    settings: Settings,
) -> InstanceId {
    let core_ptr = std::ptr::null();
    let waker = core.shared.poll.waker();
    core.instances.insert_with(|id| Instance {
        plugin: Plugin {
            path: None,
            name: name.to_string(),
            version: String::new(),
            default_framing: None,
            alpn: Vec::new(),
            framings: 0,
            vtable: loopd_handler_api::abi::loopd_vtable::EMPTY,
            stamp: None,
        },
        ptr: std::ptr::null_mut(),
        ctx: Box::new(HostCtx {
            core: core_ptr,
            instance: id,
            log_target: format!("loopd::handler::{name}"),
            name: name.to_string(),
            postbox: crate::mailbox::Postbox::new(waker.clone()),
            worker: None,
            stats_board: Default::default(),
        }),
        settings,
        scope: Scope::new(name),
        life: Life::Live,
        tls: None,
        tls_client: None,
    })
}
