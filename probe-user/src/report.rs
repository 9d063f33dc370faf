//! Monitor output: state changes, per-window lines and the final summary (text or JSON lines).
//! (Being written: see issue 4.)
