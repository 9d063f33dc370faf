//! The XDP program lives in `main.rs` (the `probe` binary, built for the BPF target by
//! `probe-user/build.rs`). This empty library exists so that `probe-user` can name this crate as
//! a build dependency, which makes cargo rebuild the program when it or `probe-common` changes.
#![no_std]
