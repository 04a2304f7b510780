//! What comes in: probe sessions ([`hub`]), the server's own vantage ([`own`]), and what there
//! is to check ([`inventory`], built from the configuration and the [`derpmap`], kept current
//! by the [`derpfeed`]), and the
//! inventory of an attached Coder deployment ([`coder`]).

pub mod coder;
pub mod derpfeed;
pub mod derpmap;
pub mod hub;
pub mod inventory;
pub mod own;
