//! Turns on the cores for the workers: of the `WORKERS` threads, only a few (`slots`) take
//! requests and run them; the rest wait for a turn, first come first served. A worker that
//! blocks (on its upstream, or on a client: `Gate::aside`) keeps its turn for a moment; if
//! the wait goes on longer than `lend_after`, the turn passes to the next waiting worker,
//! and the blocked one finishes its request without a turn and then waits for one again.
//!
//! So `WORKERS` still bounds the requests in flight, which mostly wait on upstreams for
//! seconds, while the threads competing for the cores stay few and hot. Why: with 64
//! workers on 2 cores and fast upstreams, every request woke a cold thread and the
//! scheduler interleaved dozens of them, so a few requests waited behind many time slices
//! (scripts/bench at 64 connections: added p99 about 10 ms; with 8 workers, about 2 ms,
//! and more requests per second).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

pub struct Gate {
    shared: Arc<Shared>,
    keeper: Thread,
}

struct Shared {
    slots: usize,
    lend_after: Duration,
    state: Mutex<Turns>,
}

struct Turns {
    free: usize,
    /// Workers waiting for a turn, in the order they asked; a turn is handed to the front one.
    waiting: VecDeque<Arc<Waiter>>,
    /// Turns whose holder is blocked, each lent on once it has been for `lend_after`.
    asides: Vec<Arc<Aside>>,
    /// The keeper sleeps until woken: no aside was waiting to be lent.
    keeper_idle: bool,
    closed: bool,
}

struct Waiter {
    thread: Thread,
    /// `WAITING`, then `TURN` (handed one) or `CLOSED` (let go without one).
    granted: AtomicU8,
}

const WAITING: u8 = 0;
const TURN: u8 = 1;
const CLOSED: u8 = 2;

struct Aside {
    since: Instant,
    /// Set (under the lock) when the keeper passed this turn on.
    lent: AtomicBool,
}

thread_local! {
    /// Whether this thread holds a turn now (of the one gate its worker belongs to).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

impl Gate {
    /// Four turns per core this process may use: enough to keep the cores busy while some
    /// requests are between steps, few enough that each thread stays hot.
    pub fn for_this_machine() -> Gate {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Gate::new(4 * cores, Duration::from_millis(2))
    }

    pub fn new(slots: usize, lend_after: Duration) -> Gate {
        let slots = slots.max(1);
        let shared = Arc::new(Shared {
            slots,
            lend_after,
            state: Mutex::new(Turns {
                free: slots,
                waiting: VecDeque::new(),
                asides: Vec::new(),
                keeper_idle: true,
                closed: false,
            }),
        });
        let keeper = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("gate-keeper".into())
                .spawn(move || shared.keep())
                .expect("the gate's keeper thread starts")
                .thread()
                .clone()
        };
        Gate { shared, keeper }
    }

    pub fn slots(&self) -> usize {
        self.shared.slots
    }

    /// Waits for a turn unless this thread holds one. Once the gate is closed it returns at
    /// once, turn or not.
    pub fn hold(&self) {
        if HOLDING.get() {
            return;
        }
        let me = {
            let mut turns = self.shared.lock();
            if turns.closed {
                return;
            }
            if turns.free > 0 {
                turns.free -= 1;
                HOLDING.set(true);
                return;
            }
            let me = Arc::new(Waiter {
                thread: thread::current(),
                granted: AtomicU8::new(WAITING),
            });
            turns.waiting.push_back(me.clone());
            me
        };
        // `park` may also return early (an unpark left over from before): check the grant.
        loop {
            match me.granted.load(Ordering::Acquire) {
                WAITING => thread::park(),
                grant => {
                    HOLDING.set(grant == TURN);
                    return;
                }
            }
        }
    }

    /// Gives this thread's turn up (a worker that ends).
    pub fn leave(&self) {
        if HOLDING.replace(false) {
            self.shared.pass_on(&mut self.shared.lock());
        }
    }

    /// Runs `wait`, a call that blocks (the upstream, a client's socket), keeping this
    /// thread's turn unless `wait` lasts longer than `lend_after`: then the turn goes to the
    /// next worker and this one goes on without it. Without a turn it just runs `wait`.
    pub fn aside<T>(&self, wait: impl FnOnce() -> T) -> T {
        if !HOLDING.get() {
            return wait();
        }
        let aside = Arc::new(Aside {
            since: Instant::now(),
            lent: AtomicBool::new(false),
        });
        let wake_keeper = {
            let mut turns = self.shared.lock();
            turns.asides.push(aside.clone());
            std::mem::replace(&mut turns.keeper_idle, false)
        };
        if wake_keeper {
            self.keeper.unpark();
        }
        // Ends the aside even if `wait` panics, so the keeper does not lend a turn twice.
        struct Back<'a>(&'a Shared, Arc<Aside>);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                let mut turns = self.0.lock();
                if let Some(i) = turns.asides.iter().position(|a| Arc::ptr_eq(a, &self.1)) {
                    turns.asides.swap_remove(i);
                }
                if self.1.lent.load(Ordering::Relaxed) {
                    HOLDING.set(false);
                }
            }
        }
        let _back = Back(&self.shared, aside);
        wait()
    }

    /// Lets every waiting worker go on, now and from now on (shutdown).
    pub fn close(&self) {
        let waiting = {
            let mut turns = self.shared.lock();
            turns.closed = true;
            std::mem::take(&mut turns.waiting)
        };
        for w in waiting {
            w.granted.store(CLOSED, Ordering::Release);
            w.thread.unpark();
        }
        self.keeper.unpark();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Turns> {
        // Nothing panics while the lock is held; a poisoned lock still has consistent turns.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One turn is free: to the front waiter, or back to the free ones.
    fn pass_on(&self, turns: &mut Turns) {
        match turns.waiting.pop_front() {
            Some(next) => {
                next.granted.store(TURN, Ordering::Release);
                next.thread.unpark();
            }
            None => turns.free += 1,
        }
    }

    /// The keeper: lends the turns of those blocked longer than `lend_after`, sleeping
    /// while nothing is aside.
    fn keep(&self) {
        loop {
            let next = {
                let mut turns = self.lock();
                if turns.closed {
                    return;
                }
                let now = Instant::now();
                let mut next: Option<Instant> = None;
                for i in 0..turns.asides.len() {
                    let aside = turns.asides[i].clone();
                    if aside.lent.load(Ordering::Relaxed) {
                        continue;
                    }
                    let due = aside.since + self.lend_after;
                    if due <= now {
                        aside.lent.store(true, Ordering::Relaxed);
                        self.pass_on(&mut turns);
                    } else {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
                turns.keeper_idle = next.is_none();
                next
            };
            match next {
                Some(due) => thread::park_timeout(due.saturating_duration_since(Instant::now())),
                None => thread::park(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the threads inside at once and remembers the most ever seen.
    #[derive(Default)]
    struct Inside {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Inside {
        fn enter(&self) -> usize {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            n
        }
        fn leave(&self) {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn free(gate: &Gate) -> usize {
        gate.shared.lock().free
    }

    #[test]
    fn no_more_than_the_slots_work_at_once() {
        let gate = Arc::new(Gate::new(2, Duration::from_secs(60)));
        let working = Arc::new(Inside::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, working) = (gate.clone(), working.clone());
                thread::spawn(move || {
                    for _ in 0..20 {
                        gate.hold();
                        working.enter();
                        thread::sleep(Duration::from_micros(200));
                        working.leave();
                        // A short wait keeps the turn.
                        gate.aside(|| thread::sleep(Duration::from_micros(100)));
                        assert!(HOLDING.get());
                        gate.leave();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(working.most.load(Ordering::SeqCst) <= 2);
        assert_eq!(free(&gate), 2, "every turn came back");
    }

    #[test]
    fn a_long_wait_lends_the_turn_so_every_worker_can_wait_at_once() {
        // Two turns, eight workers that all block until all eight are blocked: only lending
        // lets them get there.
        let gate = Arc::new(Gate::new(2, Duration::from_millis(1)));
        let blocked = Arc::new(Inside::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, blocked) = (gate.clone(), blocked.clone());
                thread::spawn(move || {
                    gate.hold();
                    let all = gate.aside(|| {
                        blocked.enter();
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while blocked.now.load(Ordering::SeqCst) < 8 && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(1));
                        }
                        blocked.now.load(Ordering::SeqCst) >= 8
                    });
                    gate.hold();
                    gate.leave();
                    all
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap(), "all eight workers were blocked at once");
        }
        assert_eq!(free(&gate), 2);
        assert!(gate.shared.lock().asides.is_empty());
    }

    #[test]
    fn turns_are_handed_on_in_the_order_they_were_asked_for() {
        let gate = Arc::new(Gate::new(1, Duration::from_secs(60)));
        let order = Arc::new(Mutex::new(Vec::new()));
        gate.hold();
        let mut threads = Vec::new();
        for i in 0..4 {
            let (g, order) = (gate.clone(), order.clone());
            threads.push(thread::spawn(move || {
                g.hold();
                order.lock().unwrap().push(i);
                g.leave();
            }));
            // Wait until thread i is in line before the next one asks.
            while gate.shared.lock().waiting.len() < i + 1 {
                thread::yield_now();
            }
        }
        gate.leave();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_panic_while_aside_ends_the_aside() {
        let gate = Arc::new(Gate::new(1, Duration::from_secs(60)));
        let g = gate.clone();
        let r = thread::spawn(move || {
            g.hold();
            g.aside(|| panic!("upstream"));
        })
        .join();
        assert!(r.is_err());
        assert!(gate.shared.lock().asides.is_empty());
        // The dead thread's turn is lost with it (workers catch their panics and leave).
        assert_eq!(free(&gate), 0);
    }

    #[test]
    fn closing_lets_the_waiting_go_without_a_turn() {
        let gate = Arc::new(Gate::new(1, Duration::from_secs(60)));
        gate.hold();
        let g = gate.clone();
        let waiter = thread::spawn(move || {
            g.hold();
            HOLDING.get()
        });
        while gate.shared.lock().waiting.is_empty() {
            thread::yield_now();
        }
        gate.close();
        assert!(!waiter.join().unwrap(), "no turn came with the close");
        gate.leave();
    }

    #[test]
    fn aside_without_a_turn_just_runs() {
        let gate = Gate::new(1, Duration::from_secs(60));
        assert_eq!(gate.aside(|| 7), 7);
        assert_eq!(free(&gate), 1);
    }
}
