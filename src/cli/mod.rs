//! The operator's commands beside `run`: [`inspect`] (one verdict per image, through the
//! daemon's own stages: `inspectd classify`), [`eval`] (accuracy on a labelled folder) and
//! [`watch`] (a station's topics, printed readably).

pub mod clean;
pub mod eval;
pub mod inspect;
pub mod watch;
