// An empty library target, so that link-trace can name this crate as a
// build-dependency and cargo rebuilds it when the programs change.
#![no_std]
