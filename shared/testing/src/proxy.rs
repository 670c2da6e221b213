//! A TCP proxy a test controls, put between a service and its database (or
//! another service) to cut the network between them as a partition or a
//! dead host would, and to restore it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct TcpProxy {
    address: SocketAddr,
    state: Arc<State>,
    accepting: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    cut: AtomicBool,
    connections: Mutex<Vec<AbortHandle>>,
}

impl State {
    fn drop_connections(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl TcpProxy {
    /// A proxy on a free local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State::default());
        let accepting = tokio::spawn(accept(listener, upstream, state.clone()));
        Self { address, state, accepting }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Ends every connection through the proxy and refuses new ones until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.drop_connections();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.state.drop_connections();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        if state.cut.load(Ordering::SeqCst) {
            // Closed at once: the caller reads an end of file.
            continue;
        }
        let piping = tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        let mut connections = state.connections.lock().unwrap();
        connections.retain(|connection| !connection.is_finished());
        connections.push(piping.abort_handle());
    }
}
