//! `tracer`: explains HTTP 502s from kernel TCP events.
mod btf;
mod engine;
mod events;
mod layout;
mod pods;

fn main() {}
