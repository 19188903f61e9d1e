//! Agents connected to this node right now (in memory: a connection is not replicated state).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, u64>>>,
    next: Arc<Mutex<u64>>,
    /// Fired when an agent connects, so the scheduler looks for work at once.
    pub changed: Arc<Notify>,
}

impl Sessions {
    /// Records a connection and returns its generation (a reconnect supersedes it).
    pub fn connect(&self, agent: &str) -> u64 {
        let generation = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        self.lock().insert(agent.to_string(), generation);
        self.changed.notify_one();
        generation
    }

    /// Forgets a connection unless a newer one replaced it.
    pub fn disconnect(&self, agent: &str, generation: u64) {
        let mut m = self.lock();
        if m.get(agent) == Some(&generation) {
            m.remove(agent);
        }
    }

    pub fn is_connected(&self, agent: &str) -> bool {
        self.lock().contains_key(agent)
    }

    pub fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
