//! Operator hooks run on events, directly (no shell), with a timeout.
//! (Being written: see issue 3.)
