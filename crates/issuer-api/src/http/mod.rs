//! The HTTP layer: the contract's shapes, the handlers, the route tables and the state the
//! handlers share. Nothing here decides admission; it parses, calls `crate::issuing`, and
//! answers.

pub mod contract;
pub mod guards;
pub mod handlers;
pub mod routes;
pub mod state;
pub mod timing;
