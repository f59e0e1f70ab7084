//! A crowd of hubs for the benchmarks: N hubs, each the hub's own `RelayClient` with its default
//! settings (keepalive, reconnect backoff), in rooms of a given size, whose welcomes and
//! disconnects are reported on one channel. Every event is read, as a hub does.

use std::time::{Duration, Instant};

use hub_client::transport::relay::{RelayClient, RelayConfig, RelayEvent};
use tokio::sync::mpsc;

use crate::{nth_hub, TestCluster};

/// What one hub of a [`Crowd`] saw.
#[derive(Debug, Clone, Copy)]
pub enum Seen {
    /// Hub `i` was welcomed (again), at that moment.
    Welcomed(usize, Instant),
    /// A hub's connection ended, with the relay's close code if it gave one.
    Disconnected(Option<u16>),
}

/// N hubs logged in (or logging in) to one relay; stopped when dropped.
#[derive(Debug)]
pub struct Crowd {
    /// What the hubs see, in order.
    pub seen: mpsc::UnboundedReceiver<Seen>,
    n: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    /// Starts `n` hubs on the relay at `relay_url`, in rooms (clusters) of `per_room`, spread a
    /// little (20 ms after every 100) as hubs that started at different times.
    pub async fn start(relay_url: &str, n: usize, per_room: usize) -> Self {
        let (tx, seen) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(n);
        let mut cluster = TestCluster::new();
        for i in 0..n {
            if i > 0 && i % per_room == 0 {
                cluster = TestCluster::new();
            }
            let config = RelayConfig::new(relay_url, cluster.hub_id(nth_hub(i)));
            let mut client = RelayClient::spawn(config).expect("a valid relay config");
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(event) = client.next_event().await {
                    let seen = match event {
                        RelayEvent::Connected { .. } => Seen::Welcomed(i, Instant::now()),
                        RelayEvent::Disconnected { code, .. } => {
                            Seen::Disconnected(code.map(|c| c.code()))
                        }
                        _ => continue,
                    };
                    if tx.send(seen).is_err() {
                        break;
                    }
                }
            }));
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Crowd { seen, n, tasks }
    }

    /// Waits until every hub has been welcomed once, or panics after `within`.
    pub async fn all_welcomed(&mut self, within: Duration) {
        let mut welcomed = vec![false; self.n];
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + within;
        while count < self.n {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(Seen::Welcomed(i, _))) if !welcomed[i] => {
                    welcomed[i] = true;
                    count += 1;
                }
                Ok(Some(_)) => {}
                _ => panic!(
                    "only {count} of {} hubs logged in within {within:?}",
                    self.n
                ),
            }
        }
    }

    /// Forgets what was seen so far; how many welcomes were among it.
    pub fn drain(&mut self) -> usize {
        let mut welcomes = 0;
        while let Ok(seen) = self.seen.try_recv() {
            welcomes += usize::from(matches!(seen, Seen::Welcomed(..)));
        }
        welcomes
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
