//! A tokio echo server, as tokio's own README writes one, on a
//! `current_thread` runtime (one thread, like loopd): the peer loopd's echo
//! is compared with.
//!
//! Usage: `tokio-echo ADDR` (e.g. `127.0.0.1:7000`). Prints
//! `tokio-echo listening on ADDR` once it accepts.
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("tokio-echo listening on {}", listener.local_addr()?);
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(x) => x,
            // EMFILE and friends: keep serving the connections we have.
            Err(e) => {
                eprintln!("tokio-echo: accept: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        // loopd sets TCP_NODELAY on accepted sockets; so do the other peers.
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = [0; 1024];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
