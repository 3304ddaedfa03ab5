//! ASTM E1394 records (being built).
