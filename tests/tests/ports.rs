//! `kouan probe` and `kouan ports` end to end, against simulated
//! instruments on virtual serial ports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kouan_tests::pty::VirtualPort;
use kouan_tests::{kouan, path_str, text};

/// Runs the instrument's side in a thread until stopped; returns every
/// byte the instrument received from probe.
fn instrument(
    mut port: VirtualPort,
    stop: Arc<AtomicBool>,
    mut answer: impl FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut received = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let bytes = port.receive(Duration::from_millis(100));
            received.extend_from_slice(&bytes);
            if let Some(reply) = answer(&received) {
                port.send(&reply);
            }
        }
        received
    })
}

fn probe(args: &[&str]) -> (bool, String) {
    let out = kouan()
        .arg("probe")
        .args(args)
        .output()
        .expect("kouan probe runs");
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn a_silent_balance_is_asked_si_and_recognised_as_mt_sics() {
    let dir = tempfile::tempdir().unwrap();
    let port = VirtualPort::create(&dir.path().join("balance"));
    let link = path_str(port.path()).to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let mut answered = 0;
    let balance = instrument(port, stop.clone(), move |received| {
        // A balance answers each SI with the weight, and nothing else.
        let asked = received.windows(4).filter(|w| w == b"SI\r\n").count();
        (asked > answered).then(|| {
            answered = asked;
            b"S S     100.00 g\r\n".to_vec()
        })
    });

    let (ok, output) = probe(&[&link, "--seconds", "1", "--first"]);
    stop.store(true, Ordering::Relaxed);
    let received = balance.join().expect("the balance thread");

    assert!(ok, "{output}");
    assert!(output.contains("after asking SI"), "{output}");
    assert!(output.contains("MT-SICS"), "{output}");
    assert!(output.contains("S S     100.00 g<CR>"), "{output}");
    assert!(output.contains("baud = 9600"), "{output}");
    assert_eq!(received, b"SI\r\n", "probe sends SI once, nothing else");
}

#[test]
fn an_analyzer_sending_enq_is_astm_and_is_never_written_to() {
    let dir = tempfile::tempdir().unwrap();
    let port = VirtualPort::create(&dir.path().join("analyzer"));
    let link = path_str(port.path()).to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    // An analyzer with results to send opens a session with ENQ again and
    // again while no receiver answers.
    let analyzer = instrument(port, stop.clone(), |_| Some(vec![0x05]));

    let (ok, output) = probe(&[&link, "--seconds", "1", "--first"]);
    stop.store(true, Ordering::Relaxed);
    let received = analyzer.join().expect("the analyzer thread");

    assert!(ok, "{output}");
    assert!(output.contains("ASTM"), "{output}");
    assert!(output.contains("<ENQ>"), "{output}");
    assert!(
        received.is_empty(),
        "probe wrote {received:?} to an analyzer"
    );
}

#[test]
fn a_modbus_bus_is_recognised_by_crc() {
    let dir = tempfile::tempdir().unwrap();
    let port = VirtualPort::create(&dir.path().join("bus"));
    let link = path_str(port.path()).to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    // What a listener on a busy RS-485 bus hears: the master's read
    // request (the vector of the Modbus over serial line guide) and a reply.
    let traffic = [
        0x01, 0x03, 0x00, 0x00, 0x00, 0x0a, 0xc5, 0xcd, 0x01, 0x03, 0x02, 0x00, 0x2a, 0x39, 0x9b,
    ];
    let bus = instrument(port, stop.clone(), move |_| Some(traffic.to_vec()));

    let (ok, output) = probe(&[&link, "--seconds", "1", "--first", "--listen-only"]);
    stop.store(true, Ordering::Relaxed);
    let received = bus.join().expect("the bus thread");

    assert!(ok, "{output}");
    assert!(output.contains("Modbus RTU"), "{output}");
    assert!(received.is_empty(), "probe must never talk on a bus");
}

#[test]
fn a_silent_port_with_listen_only_sends_nothing_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let port = VirtualPort::create(&dir.path().join("silent"));
    let link = path_str(port.path()).to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let device = instrument(port, stop.clone(), |_| None);

    let (ok, output) = probe(&[&link, "--seconds", "1", "--listen-only"]);
    stop.store(true, Ordering::Relaxed);
    let received = device.join().expect("the device thread");

    assert!(!ok, "nothing heard must be a failure:\n{output}");
    assert!(output.contains("the device sent nothing"), "{output}");
    for setting in [
        "9600 8N1",
        "19200 8N1",
        "38400 8N1",
        "115200 8N1",
        "9600 7E1",
    ] {
        assert!(output.contains(setting), "{setting} not tried:\n{output}");
    }
    assert!(received.is_empty());
}

#[test]
fn a_missing_port_says_how_to_find_one() {
    let (ok, output) = probe(&["/dev/serial/by-id/usb-not-plugged-in", "--seconds", "1"]);
    assert!(!ok);
    assert!(output.contains("usb-not-plugged-in"), "{output}");
    assert!(output.contains("kouan ports"), "{output}");
}

#[test]
fn ports_lists_a_by_id_link_with_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let by_id = dev.join("serial/by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let port = VirtualPort::create(&dir.path().join("pty"));
    let node = std::fs::read_link(port.path()).expect("the pty link");
    let link = by_id.join("usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0");
    std::os::unix::fs::symlink(&node, &link).unwrap();

    let out = kouan()
        .args(["ports", "--dev-root", path_str(&dev), "--sys-root"])
        .arg(dir.path().join("sys"))
        .output()
        .expect("kouan ports runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(path_str(&link)), "{stdout}");
    assert!(
        stdout.contains(&format!("node    {}", node.display())),
        "{stdout}"
    );
    assert!(stdout.contains("USB keyboards"), "{stdout}");
}
