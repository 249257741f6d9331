//! Decoding of ring-buffer records into typed events. Malformed records (which only a version
//! mismatch between kernel and user side could produce) are reported, never trusted.
use std::mem::size_of;

use tracer_common::{CloseEvent, DataHeader, EventHeader, EventKind, ProcessEvent};

/// One ring-buffer record, decoded. The only reader of the records' layout: everything else
/// takes these.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// Bytes a tracked socket (or TLS library) call moved: its header and captured prefix.
    Data {
        header: DataHeader,
        payload: &'a [u8],
    },
    /// A tracked connection ended.
    Close(CloseEvent),
    /// Process `pid` called execve; `ts`: CLOCK_MONOTONIC nanoseconds.
    Exec { pid: u32, ts: u64 },
    /// Process `pid` exited; `ts`: CLOCK_MONOTONIC nanoseconds.
    Exit { pid: u32, ts: u64 },
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a plain-old-data #[repr(C)] type; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(record: &[u8]) -> Option<Event<'_>> {
    let header: EventHeader = read(record)?;
    match EventKind::from_u8(header.kind)? {
        EventKind::Data => {
            let h: DataHeader = read(record)?;
            let start = size_of::<DataHeader>();
            let end = start.checked_add(h.captured_len as usize)?;
            let payload = record.get(start..end)?;
            Some(Event::Data { header: h, payload })
        }
        EventKind::Close => Some(Event::Close(read(record)?)),
        EventKind::Exec => {
            let EventHeader { pid, ts, .. } = read::<ProcessEvent>(record)?.header;
            Some(Event::Exec { pid, ts })
        }
        EventKind::Exit => {
            let EventHeader { pid, ts, .. } = read::<ProcessEvent>(record)?.header;
            Some(Event::Exit { pid, ts })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading a POD value's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn data_with_payload() {
        let mut h = DataHeader::default();
        h.header.kind = EventKind::Data as u8;
        h.captured_len = 3;
        h.total_len = 10;
        let mut rec = bytes_of(&h);
        rec.extend_from_slice(b"GET");
        match decode(&rec) {
            Some(Event::Data { header, payload }) => {
                assert_eq!(payload, b"GET");
                assert_eq!(header.total_len, 10);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn process_events_carry_pid_and_time() {
        let mut ev = ProcessEvent::default();
        ev.header.pid = 42;
        ev.header.ts = 7_000;
        for (kind, exec) in [(EventKind::Exec, true), (EventKind::Exit, false)] {
            ev.header.kind = kind as u8;
            match (decode(&bytes_of(&ev)), exec) {
                (Some(Event::Exec { pid: 42, ts: 7_000 }), true)
                | (Some(Event::Exit { pid: 42, ts: 7_000 }), false) => {}
                (e, _) => panic!("{kind:?}: {e:?}"),
            }
        }
    }

    #[test]
    fn malformed_records_are_rejected() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[9; 64]).is_none());
        let mut h = DataHeader::default();
        h.header.kind = EventKind::Data as u8;
        h.captured_len = 100; // claims more payload than the record has
        assert!(decode(&bytes_of(&h)).is_none());
        let mut ev = ProcessEvent::default();
        ev.header.kind = EventKind::Exit as u8;
        assert!(decode(&bytes_of(&ev)[..size_of::<ProcessEvent>() - 1]).is_none());
    }
}
