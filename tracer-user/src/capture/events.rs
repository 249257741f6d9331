//! Decoding of ring-buffer records into typed events. Malformed records (which only a version
//! mismatch between kernel and user side could produce) are reported, never trusted.
use std::mem::size_of;

use tracer_common::{CloseEvent, DataHeader, EventHeader, EventKind, ProcessEvent};

#[derive(Debug)]
pub enum Event<'a> {
    Data {
        header: DataHeader,
        payload: &'a [u8],
    },
    Close(CloseEvent),
    Exec {
        pid: u32,
    },
    Exit {
        pid: u32,
    },
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
        EventKind::Exec => Some(Event::Exec {
            pid: read::<ProcessEvent>(record)?.header.pid,
        }),
        EventKind::Exit => Some(Event::Exit {
            pid: read::<ProcessEvent>(record)?.header.pid,
        }),
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
    fn malformed_records_are_rejected() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[9; 64]).is_none());
        let mut h = DataHeader::default();
        h.header.kind = EventKind::Data as u8;
        h.captured_len = 100; // claims more payload than the record has
        assert!(decode(&bytes_of(&h)).is_none());
    }
}
