//! `kouan ports`: the serial ports and keyboard-wedge scanners attached to
//! this machine, with the stable paths to put in the config and what USB
//! says about each (vendor and product ids, manufacturer, product, serial
//! number).
//!
//! Everything comes from `/dev` and sysfs, not libudev, so the binary needs
//! no C library and cross-builds plainly. The USB facts are the attributes
//! of the first USB device (the directory with `idVendor`) above the tty or
//! input node in sysfs: the same ones udev uses for `/dev/serial/by-id`
//! names and for rules such as `packaging/99-kouan.rules`.

use std::fs;
use std::path::{Path, PathBuf};

/// Where `/dev` and `/sys` are (a test points them at a made-up tree).
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/dev`.
    pub dev: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            dev: PathBuf::from("/dev"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// What USB says about a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsbInfo {
    /// `idVendor`, 4 hex digits.
    pub vendor_id: String,
    /// `idProduct`, 4 hex digits.
    pub product_id: String,
    /// The manufacturer string, if the device has one.
    pub manufacturer: Option<String>,
    /// The product string.
    pub product: Option<String>,
    /// The serial number: what tells two identical adapters apart.
    pub serial: Option<String>,
}

/// One attached device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The kernel's node, `/dev/ttyUSB0` or `/dev/input/event3`.
    pub node: PathBuf,
    /// The stable links to it (`/dev/serial/by-id/...`, `by-path`).
    pub stable: Vec<PathBuf>,
    /// USB facts, for a USB device.
    pub usb: Option<UsbInfo>,
}

/// The serial ports: every node under `/dev/serial/by-id` and
/// `/dev/serial/by-path`, and `ttyUSB*`, `ttyACM*`, `ttyAMA*` and the
/// `ttyS*` that have a UART behind them.
pub fn serial_ports(roots: &Roots) -> Vec<Device> {
    let mut nodes: Vec<PathBuf> = read_dir_names(&roots.dev)
        .into_iter()
        .filter(|name| {
            ["ttyUSB", "ttyACM", "ttyAMA", "ttymxc"]
                .iter()
                .any(|prefix| numbered(name, prefix))
                || (numbered(name, "ttyS") && real_uart(roots, name))
        })
        .map(|name| roots.dev.join(name))
        .collect();
    let links = links_in(roots, &["serial/by-id", "serial/by-path"]);
    for (_, target) in &links {
        if !nodes.contains(target) {
            nodes.push(target.clone());
        }
    }
    nodes.sort_by_key(|node| sort_key(&node.to_string_lossy()));
    nodes
        .into_iter()
        .map(|node| {
            let stable = stable_links(&links, &node);
            let name = node.file_name().unwrap_or_default();
            let usb = usb_info(&roots.sys.join("class/tty").join(name).join("device"));
            Device { node, stable, usb }
        })
        .collect()
}

/// The keyboards among the input devices that are on USB, by their
/// `/dev/input/by-id/*-event-kbd` links: where keyboard-wedge scanners are.
pub fn input_devices(roots: &Roots) -> Vec<Device> {
    let links = links_in(roots, &["input/by-id"]);
    let mut devices: Vec<Device> = Vec::new();
    for (link, target) in &links {
        let is_kbd = link
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("-event-kbd"));
        if !is_kbd || devices.iter().any(|d| &d.node == target) {
            continue;
        }
        let name = target.file_name().unwrap_or_default();
        let usb = usb_info(&roots.sys.join("class/input").join(name).join("device"));
        devices.push(Device {
            node: target.clone(),
            stable: stable_links(&links, target),
            usb,
        });
    }
    devices.sort_by_key(|d| sort_key(&d.node.to_string_lossy()));
    devices
}

fn numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `ttyS0` to `ttyS31` always exist on a PC; only those whose UART the
/// kernel found have a `type` other than 0 (PORT_UNKNOWN).
fn real_uart(roots: &Roots, name: &str) -> bool {
    let kind = fs::read_to_string(roots.sys.join("class/tty").join(name).join("type"));
    kind.is_ok_and(|k| k.trim() != "0")
}

/// `ttyUSB2` before `ttyUSB10`.
fn sort_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    let number = name[digits..].parse().unwrap_or(0);
    (name[..digits].to_owned(), number)
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Every symlink in the given folders of `/dev`, with the node it leads to.
fn links_in(roots: &Roots, dirs: &[&str]) -> Vec<(PathBuf, PathBuf)> {
    let mut links = Vec::new();
    for dir in dirs {
        let dir = roots.dev.join(dir);
        let mut names = read_dir_names(&dir);
        names.sort();
        for name in names {
            let link = dir.join(name);
            let Ok(target) = fs::read_link(&link) else {
                continue;
            };
            // udev's links are relative (`../../ttyUSB0`): resolve them by
            // hand, since a made-up tree is not where they point.
            let target = normalize(&dir.join(target));
            links.push((link, target));
        }
    }
    links
}

fn stable_links(links: &[(PathBuf, PathBuf)], node: &Path) -> Vec<PathBuf> {
    links
        .iter()
        .filter(|(_, target)| target == node)
        .map(|(link, _)| link.clone())
        .collect()
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The USB device above a sysfs device directory, if there is one.
fn usb_info(device: &Path) -> Option<UsbInfo> {
    let mut dir = fs::canonicalize(device).ok()?;
    loop {
        if dir.join("idVendor").is_file() {
            let read = |attr: &str| {
                fs::read_to_string(dir.join(attr))
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            };
            return Some(UsbInfo {
                vendor_id: read("idVendor")?,
                product_id: read("idProduct").unwrap_or_default(),
                manufacturer: read("manufacturer"),
                product: read("product"),
                serial: read("serial"),
            });
        }
        if !dir.pop() || dir.as_os_str().len() <= 1 {
            return None;
        }
    }
}

/// `kouan ports`: list serial ports and USB keyboards.
#[derive(Debug, clap::Args)]
pub struct PortsArgs {
    /// Look in this directory instead of /dev (tests).
    #[arg(long, hide = true, default_value = "/dev")]
    pub dev_root: PathBuf,
    /// Look in this directory instead of /sys (tests).
    #[arg(long, hide = true, default_value = "/sys")]
    pub sys_root: PathBuf,
}

/// Runs `kouan ports`.
pub fn run(args: &PortsArgs) -> anyhow::Result<bool> {
    let roots = Roots {
        dev: args.dev_root.clone(),
        sys: args.sys_root.clone(),
    };
    print!("{}", report(&roots));
    Ok(true)
}

/// The report `kouan ports` prints.
pub fn report(roots: &Roots) -> String {
    let mut out = String::new();
    let serial = serial_ports(roots);
    out.push_str("serial ports (`port` of an [[instrument]]):\n");
    if serial.is_empty() {
        out.push_str(
            "  none found: plug the adapter in; `dmesg` shows whether the kernel saw it\n",
        );
    }
    for device in &serial {
        describe(&mut out, device);
    }
    let input = input_devices(roots);
    out.push_str("\nUSB keyboards (`input` of a keyboard-wedge scanner):\n");
    if input.is_empty() {
        out.push_str("  none found\n");
    }
    for device in &input {
        describe(&mut out, device);
    }
    out.push_str(
        "\nPut the first path of a device in the config: it stays the same when adapters \
         are plugged in another order.\n`kouan probe PORT` listens to a serial port and \
         says what the device speaks.\n",
    );
    out
}

fn describe(out: &mut String, device: &Device) {
    let node = device.node.display();
    match device.stable.first() {
        Some(first) => {
            out.push_str(&format!("  {}\n", first.display()));
            for other in &device.stable[1..] {
                out.push_str(&format!("  {}\n", other.display()));
            }
            out.push_str(&format!("      node    {node}\n"));
        }
        None => out.push_str(&format!("  {node}\n")),
    }
    match &device.usb {
        Some(usb) => {
            out.push_str(&format!(
                "      usb     {}:{}\n",
                usb.vendor_id, usb.product_id
            ));
            let fields = [
                ("maker", &usb.manufacturer),
                ("product", &usb.product),
                ("serial", &usb.serial),
            ];
            for (label, value) in fields {
                if let Some(value) = value {
                    out.push_str(&format!("      {label:<8}{value}\n"));
                }
            }
        }
        None => out.push_str("      (not USB: an on-board UART)\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A USB FTDI adapter at ttyUSB0 with its by-id link, an on-board
    /// UART at ttyS0, an absent ttyS1, and a USB scanner keyboard.
    pub(crate) fn fake_tree(root: &Path) -> Roots {
        let roots = Roots {
            dev: root.join("dev"),
            sys: root.join("sys"),
        };
        let usb = roots.sys.join("devices/pci0000:00/usb1/1-1");
        let iface = usb.join("1-1:1.0/ttyUSB0");
        fs::create_dir_all(&iface).unwrap();
        for (attr, value) in [
            ("idVendor", "0403\n"),
            ("idProduct", "6001\n"),
            ("manufacturer", "FTDI\n"),
            ("product", "FT232R USB UART\n"),
            ("serial", "A10K1234\n"),
        ] {
            fs::write(usb.join(attr), value).unwrap();
        }
        let class = roots.sys.join("class/tty");
        fs::create_dir_all(class.join("ttyUSB0")).unwrap();
        symlink(&iface, class.join("ttyUSB0/device")).unwrap();
        for (name, kind) in [("ttyS0", "4\n"), ("ttyS1", "0\n")] {
            fs::create_dir_all(class.join(name)).unwrap();
            fs::write(class.join(name).join("type"), kind).unwrap();
        }
        let by_id = roots.dev.join("serial/by-id");
        fs::create_dir_all(&by_id).unwrap();
        for name in ["ttyUSB0", "ttyS0", "ttyS1", "tty0"] {
            fs::write(roots.dev.join(name), "").unwrap();
        }
        symlink(
            "../../ttyUSB0",
            by_id.join("usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"),
        )
        .unwrap();

        let scanner = roots.sys.join("devices/pci0000:00/usb1/1-2");
        let event = scanner.join("1-2:1.0/input/input5");
        fs::create_dir_all(&event).unwrap();
        fs::write(scanner.join("idVendor"), "0c2e\n").unwrap();
        fs::write(scanner.join("idProduct"), "0b61\n").unwrap();
        fs::write(scanner.join("product"), "Honeywell Scanner\n").unwrap();
        fs::create_dir_all(roots.sys.join("class/input/event3")).unwrap();
        symlink(&event, roots.sys.join("class/input/event3/device")).unwrap();
        fs::create_dir_all(roots.dev.join("input/by-id")).unwrap();
        fs::write(roots.dev.join("input/event3"), "").unwrap();
        symlink(
            "../event3",
            roots
                .dev
                .join("input/by-id/usb-Honeywell_Scanner_18112B3F-event-kbd"),
        )
        .unwrap();
        roots
    }

    #[test]
    fn usb_adapters_get_their_by_id_path_and_usb_facts() {
        let dir = tempfile::tempdir().unwrap();
        let roots = fake_tree(dir.path());
        let ports = serial_ports(&roots);
        let names: Vec<_> = ports.iter().map(|d| d.node.clone()).collect();
        assert_eq!(
            names,
            [roots.dev.join("ttyS0"), roots.dev.join("ttyUSB0")],
            "ttyS1 has no UART, tty0 is a console"
        );
        let usb = &ports[1];
        assert_eq!(usb.stable.len(), 1);
        let info = usb.usb.as_ref().unwrap();
        assert_eq!(
            (&info.vendor_id[..], &info.product_id[..]),
            ("0403", "6001")
        );
        assert_eq!(info.serial.as_deref(), Some("A10K1234"));
        assert!(ports[0].usb.is_none());
    }

    #[test]
    fn keyboard_wedge_scanners_are_found_by_their_kbd_link() {
        let dir = tempfile::tempdir().unwrap();
        let roots = fake_tree(dir.path());
        let input = input_devices(&roots);
        assert_eq!(input.len(), 1);
        assert_eq!(input[0].node, roots.dev.join("input/event3"));
        let usb = input[0].usb.as_ref().unwrap();
        assert_eq!(usb.product.as_deref(), Some("Honeywell Scanner"));
    }

    #[test]
    fn ports_sort_by_number() {
        let mut names = vec!["ttyUSB10", "ttyUSB2", "ttyACM0"];
        names.sort_by_key(|n| sort_key(n));
        assert_eq!(names, ["ttyACM0", "ttyUSB2", "ttyUSB10"]);
    }
}
