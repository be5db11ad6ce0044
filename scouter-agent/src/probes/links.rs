//! Detaching attached programs quickly.
//!
//! Every tracepoint and uprobe attachment is a perf event, and releasing one waits for an RCU
//! grace period (40–90 ms measured on the test VM). The agent holds a few dozen, so letting
//! them go one after another (as dropping the object does) took two to five seconds between
//! SIGTERM and exit, during which the programs still ran. The agent therefore owns its links
//! apart from the programs ([`OwnedLink`]) and drops them from threads of their own: concurrent
//! releases wait for the same grace period, and the whole set goes in about one.

use std::thread::JoinHandle;

/// An attachment the agent owns: dropping it detaches the program from that hook.
pub type OwnedLink = Box<dyn Send>;

/// Threads still detaching links.
#[derive(Default)]
pub struct Detacher {
    pending: Vec<JoinHandle<()>>,
}

impl Detacher {
    /// Starts detaching `links`, one thread each, without waiting for them.
    pub fn detach(&mut self, links: Vec<OwnedLink>) {
        self.pending.retain(|thread| !thread.is_finished());
        for link in links {
            let spawned = std::thread::Builder::new().name("detach".into()).spawn(move || drop(link));
            match spawned {
                Ok(thread) => self.pending.push(thread),
                // Dropped here, then: slower, but detached all the same.
                Err(error) => tracing::debug!(%error, "detaching a link on the calling thread"),
            }
        }
    }

    /// Waits until every link handed over so far is detached.
    pub fn finish(&mut self) {
        for thread in self.pending.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Detacher {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Stands for a link whose release waits for a grace period; counts releases under way.
    struct SlowLink {
        under_way: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
        released: Arc<AtomicUsize>,
    }

    impl Drop for SlowLink {
        fn drop(&mut self) {
            let now = self.under_way.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            self.under_way.fetch_sub(1, Ordering::SeqCst);
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn links_are_released_together_and_all_before_finish_returns() {
        let (under_way, most_at_once, released) = (Arc::default(), Arc::default(), Arc::new(AtomicUsize::new(0)));
        let links: Vec<OwnedLink> = (0..20)
            .map(|_| {
                let link = SlowLink {
                    under_way: Arc::clone(&under_way),
                    most_at_once: Arc::clone(&most_at_once),
                    released: Arc::clone(&released),
                };
                Box::new(link) as OwnedLink
            })
            .collect();
        let mut detacher = Detacher::default();
        detacher.detach(links);
        detacher.finish();
        assert_eq!(released.load(Ordering::SeqCst), 20);
        assert!(most_at_once.load(Ordering::SeqCst) > 1, "released one after another");
    }
}
