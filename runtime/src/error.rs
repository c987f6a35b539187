//! The one error type of the `loopd` crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can stop loopd from starting or running. Each variant's
/// message names what failed (file and line, library path, listener and
/// handler) and why.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The config is malformed; the message names the file, line and key.
    Config(String),
    /// A plugin could not be loaded or refused to start.
    Plugin {
        /// Where the config names the plugin (`file:line:column`), if known.
        location: Option<String>,
        /// The handler instance it was loaded for.
        handler: String,
        /// The library path (or the name, when no file was found).
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// A listener could not be opened.
    Listen {
        /// Where the config writes the listener (`file:line:column`), if
        /// known.
        location: Option<String>,
        /// The handler that owns it.
        handler: String,
        /// The listener URL.
        listener: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// The operating system refused a step of setting the runtime up.
    System {
        /// The step, e.g. `creating the poller (epoll)` or `installing the
        /// SIGINT/SIGTERM handlers`.
        what: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another I/O failure, without more context (the `From<io::Error>`
    /// conversion).
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => f.write_str(msg),
            Error::Plugin {
                location,
                handler,
                path,
                reason,
            } => {
                if let Some(at) = location {
                    write!(f, "{at}: ")?;
                }
                write!(
                    f,
                    "handler `{handler}`: plugin {}: {reason}",
                    path.display()
                )
            }
            Error::Listen {
                location,
                handler,
                listener,
                source,
            } => {
                if let Some(at) = location {
                    write!(f, "{at}: ")?;
                }
                write!(
                    f,
                    "handler `{handler}`: cannot listen on {listener}: {source}"
                )?;
                // Hints for what the operating system said; loopd's own
                // messages (stale or live unix sockets, its own listeners)
                // already explain themselves.
                if source.raw_os_error().is_none() {
                    return Ok(());
                }
                let unix = listener.starts_with("unix://");
                match source.kind() {
                    io::ErrorKind::AddrInUse if !unix => {
                        f.write_str(" (another process is using it; pick another port or stop it)")
                    }
                    io::ErrorKind::PermissionDenied if unix => {
                        f.write_str(" (check the permissions of the socket's directory)")
                    }
                    io::ErrorKind::PermissionDenied => {
                        f.write_str(" (ports below 1024 need privileges)")
                    }
                    io::ErrorKind::NotFound if unix => {
                        f.write_str(" (the socket's directory does not exist)")
                    }
                    _ => Ok(()),
                }
            }
            Error::System { what, source } => write!(f, "{what}: {source}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Listen { source, .. } | Error::System { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
