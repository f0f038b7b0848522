//! Transforms: synchronous functions from one event to zero or more events.
//! No I/O, no waiting. Filtered-out events still count as handled for
//! checkpoints: positions travel with transaction boundaries, not events.

use crate::event::ChangeEvent;

pub trait Transform: Send + Sync {
    fn apply(&self, event: ChangeEvent, out: &mut Vec<ChangeEvent>);
}
