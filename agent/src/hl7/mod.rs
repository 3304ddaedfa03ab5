//! HL7 v2 over MLLP (being built).
