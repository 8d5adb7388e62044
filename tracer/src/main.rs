//! `tracer`: explains HTTP 502s from kernel TCP events.
mod btf;
mod layout;
mod pods;

fn main() {}
