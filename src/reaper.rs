//! Read deadlines for request bodies, which tiny_http does not have.
//!
//! tiny_http reads bodies lazily from sockets that have no timeout, so a client that sends its
//! headers and then stalls would hold a worker for as long as it likes. A worker registers a
//! deadline before it reads a body; if the deadline passes, this watchdog finds the
//! connection's socket and shuts down its read half, which makes the blocked read return at
//! once. The normal path costs a mutex lock on registering and on dropping the `Watch`; the
//! socket search (a walk over `/proc/self/fd`) only happens for a client that is already late.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

struct Entry {
    deadline: Instant,
    peer: SocketAddr,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    watched: HashMap<u64, Entry>,
    stopped: bool,
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    local_port: u16,
}

/// The watchdog. Cloning shares it.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

/// A registered deadline; dropping it withdraws the deadline.
pub struct Watch {
    inner: Option<Arc<Inner>>,
    id: u64,
    fired: Arc<AtomicBool>,
}

impl Watch {
    /// True when the deadline passed and the connection's read side was shut down.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            lock(&inner.state).watched.remove(&self.id);
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state stays consistent even if a holder panicked: every update is one map call.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reaper {
    /// Starts the watchdog for connections accepted on `local_port`; it checks every `tick`.
    pub fn start(local_port: u16, tick: Duration) -> Reaper {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            local_port,
        });
        let worker = inner.clone();
        thread::Builder::new()
            .name("read-deadlines".into())
            .spawn(move || run(&worker, tick))
            .expect("spawning the read-deadline thread");
        Reaper { inner }
    }

    /// Registers a deadline `timeout` from now for the connection from `peer`.
    pub fn watch(&self, peer: Option<SocketAddr>, timeout: Duration) -> Watch {
        let fired = Arc::new(AtomicBool::new(false));
        let Some(peer) = peer else {
            return Watch {
                inner: None,
                id: 0,
                fired,
            };
        };
        let mut state = lock(&self.inner.state);
        state.next_id += 1;
        let id = state.next_id;
        state.watched.insert(
            id,
            Entry {
                deadline: Instant::now() + timeout,
                peer,
                fired: fired.clone(),
            },
        );
        Watch {
            inner: Some(self.inner.clone()),
            id,
            fired,
        }
    }

    /// Cuts the read side of the connection from `peer` now (used after a 413).
    pub fn cut(&self, peer: Option<SocketAddr>) {
        if let Some(peer) = peer {
            shutdown_reads(peer, self.inner.local_port);
        }
    }

    pub fn stop(&self) {
        lock(&self.inner.state).stopped = true;
        self.inner.wake.notify_all();
    }
}

fn run(inner: &Inner, tick: Duration) {
    let mut state = lock(&inner.state);
    loop {
        if state.stopped {
            return;
        }
        let now = Instant::now();
        let expired: Vec<(u64, SocketAddr, Arc<AtomicBool>)> = state
            .watched
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(id, e)| (*id, e.peer, e.fired.clone()))
            .collect();
        if !expired.is_empty() {
            for (id, _, _) in &expired {
                state.watched.remove(id);
            }
            drop(state);
            for (_, peer, fired) in expired {
                fired.store(true, Ordering::Release);
                let cut = shutdown_reads(peer, inner.local_port);
                crate::info!("read deadline passed for a client; closed {cut} socket(s)");
            }
            state = lock(&inner.state);
            continue;
        }
        state = inner
            .wake
            .wait_timeout(state, tick)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Shuts down the read half of every socket of this process connected from `peer` to
/// `local_port`, returning how many it found (tiny_http holds two handles per connection).
#[cfg(target_os = "linux")]
fn shutdown_reads(peer: SocketAddr, local_port: u16) -> usize {
    use std::mem::ManuallyDrop;
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::{FromRawFd, RawFd};

    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut found = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed: ManuallyDrop never closes it, and every call
        // below is a plain socket syscall that fails harmlessly on a descriptor that is not a
        // TCP socket (or that was closed since the directory was listed).
        let sock = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let same_peer = sock.peer_addr().map(|a| a == peer).unwrap_or(false);
        if same_peer && sock.local_addr().map(|a| a.port()).ok() == Some(local_port) {
            let _ = sock.shutdown(Shutdown::Read);
            found += 1;
        }
    }
    found
}

#[cfg(not(target_os = "linux"))]
fn shutdown_reads(_peer: SocketAddr, _local_port: u16) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_stalled_read_returns_once_its_deadline_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server_side, peer) = listener.accept().unwrap();

        let reaper = Reaper::start(port, Duration::from_millis(10));
        let watch = reaper.watch(Some(peer), Duration::from_millis(50));
        let mut buf = [0u8; 16];
        // Blocks until the reaper shuts the read side down; then reads end of stream.
        assert_eq!(server_side.read(&mut buf).unwrap(), 0);
        assert!(watch.fired());
        reaper.stop();
    }

    #[test]
    fn dropping_a_watch_withdraws_its_deadline() {
        let reaper = Reaper::start(1, Duration::from_millis(5));
        let watch = reaper.watch(
            Some("127.0.0.1:9".parse().unwrap()),
            Duration::from_secs(60),
        );
        assert_eq!(lock(&reaper.inner.state).watched.len(), 1);
        drop(watch);
        assert!(lock(&reaper.inner.state).watched.is_empty());
        reaper.stop();
    }
}
