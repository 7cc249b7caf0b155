//! Two-way sync (DESIGN.md §7): a **link** (`links/<name>.yaml`) pairs
//! System A's records with a provider object's, field by field, each field
//! with a policy. Two ordinary pipelines carry its two directions (System
//! A's CDC events out, the provider's changes in); each names the link and
//! its direction. Between evaluation and sending, the link's state
//! (`state.rs`, kept in `store.rs`) decides per field what each side must
//! be written (`engine.rs`): the winning changes, never a side's own echo.

pub mod engine;
pub mod link;
pub mod state;
pub mod store;

pub use link::{Link, LinkField};
pub use state::{FieldState, Observed, PairState, Seen, Side};
