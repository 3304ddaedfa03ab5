//! Modbus RTU master (being built).
