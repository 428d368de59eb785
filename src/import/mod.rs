//! `switchyard import nginx.conf`: translate an nginx configuration into a route table.
//!
//! [`parse`] reads nginx's grammar (includes expanded, every directive with its file and
//! line); the translation builds on it.

pub mod parse;
