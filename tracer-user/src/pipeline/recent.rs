//! The recent-traces stage: copies what the node-local view needs of every span into its
//! store (`ui::store`). It sits before any sampling, so a request a sampler drops can still be
//! opened on this node. Its cost per span: one compact copy of the span (two allocations) and
//! one short lock.
use std::sync::Arc;

use crate::{span::Span, ui::store::RecentStore};

pub struct RecentTraces {
    store: Arc<RecentStore>,
}

impl RecentTraces {
    pub fn new(store: Arc<RecentStore>) -> Self {
        Self { store }
    }

    pub fn on_span(&mut self, span: &Span) {
        self.store.insert_span(span);
    }

    /// Forgets idle route windows.
    pub fn tick(&mut self, now_unix_ns: u64) {
        self.store.tick(now_unix_ns);
    }
}
