//! What comes in: probe sessions ([`hub`]), the server's own vantage ([`own`]), and what there
//! is to check ([`inventory`], built from the configuration and the [`derpmap`]).

pub mod derpmap;
pub mod hub;
pub mod inventory;
pub mod own;
