//! USB keyboard-wedge scanners through evdev (being built).
