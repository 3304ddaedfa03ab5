//! The firmware's one logging shim: `defmt` with the `defmt` feature, or
//! nothing.
//!
//! Node code logs through the macros here and never names a logger, so a
//! board picks the transport (RTT through a debug probe, usually) by
//! enabling the feature, and a board without a probe pays for no
//! formatting code and no strings. Without the feature the macros still
//! evaluate nothing but borrow their arguments, so a variable used only in
//! a log line does not warn. Arguments must implement `defmt::Format`:
//! integers, floats, `bool` and `&str` do.
#![allow(unused_macros)]

macro_rules! debug {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$x,)*);
    }};
}

macro_rules! info {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$x,)*);
    }};
}

macro_rules! warn {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$x,)*);
    }};
}
