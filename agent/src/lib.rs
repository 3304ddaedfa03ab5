//! The kouan agent as a library: what the `kouan` binary is made of.
//!
//! A reading's path through the agent: a driver parses bytes from an
//! instrument into an [`writer::Entry`]; the [`writer::Writer`] signs it as
//! a [`record`] (COSE_Sign1 over a CBOR payload, chained by hash) and makes
//! it durable in the [`store`]; only then is the instrument acknowledged.
//! The uplink later sends stored records to the platform and deletes them
//! once the platform confirms. [`verify`] checks a sequence of records as
//! the platform does; [`keys`] holds the signing keys.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use kouan_agent::{clock::CaptureTime, keys::SigningKey, record, store::Store};
//! use kouan_agent::writer::{Entry, Writer, WriterConfig};
//!
//! let key = SigningKey::load("agent.key".as_ref())?;
//! let (store, opened) = Store::open_or_recover("kouan.db".as_ref(), &[key.public_key().clone()])?;
//! let (writer, _thread) = Writer::start(store, &opened, key, WriterConfig::new("gy-air-01", "guiyang-airport"))?;
//! let body = record::ReadingBody::new(vec![], b"S S     100.00 g\r\n".to_vec());
//! let entry = Entry {
//!     instrument: "balance-1".into(),
//!     kind: record::Kind::Reading,
//!     time: CaptureTime::now(),
//!     body: record::body(&body)?,
//! };
//! let durable = writer.append(entry).await?; // now the balance may be told
//! println!("stored as seq {}", durable.seq);
//! # Ok(()) }
//! ```

pub mod astm;
pub mod check;
pub mod clock;
pub mod config;
pub mod demo;
pub mod hl7;
pub mod instrument;
pub mod keys;
pub mod modbus;
pub mod node;
pub mod platform;
pub mod ports;
pub mod probe;
pub mod rapid;
pub mod receive;
pub mod record;
pub mod run;
pub mod scan;
pub mod status;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod uplink;
pub mod verify;
pub mod wedge;
pub mod writer;
