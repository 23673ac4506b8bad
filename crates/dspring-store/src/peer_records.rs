//! Peers' signed address records (libp2p `PeerRecord` envelopes), kept so that after a
//! restart the node dials a peer where it last said it was, not where an old contact card
//! says. The network checks each record's signature and age before the node keeps it; here
//! a record is an opaque, bounded blob per member, replaced by the next one kept.

use dspring_proto::MemberId;
use rusqlite::params;

use crate::error::{Corrupt, StoreError};
use crate::{Store, hex, now_ms, to_sql_int};

/// Largest record kept: the network refuses larger ones (a handful of addresses, a key and
/// a signature take well under a kilobyte).
pub const MAX_PEER_RECORD_LEN: usize = 2048;
/// Records kept at most: the node keeps them for its contacts, group members and mailboxes
/// only, so this bounds what a flood of peers could make it write, not normal use.
pub const MAX_PEER_RECORDS: usize = 65_536;

impl Store {
    /// Keeps `record` as `member`'s newest signed record. False if it was not kept: over
    /// [`MAX_PEER_RECORDS`] members already.
    pub fn put_peer_record(
        &mut self,
        member: &MemberId,
        record: &[u8],
    ) -> Result<bool, StoreError> {
        if record.len() > MAX_PEER_RECORD_LEN {
            return Err(StoreError::invalid("peer record too long"));
        }
        let tx = self.conn.transaction()?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM peer_records WHERE member_id = ?1)",
            [member.0],
            |r| r.get(0),
        )?;
        let count: i64 = tx.query_row("SELECT count(*) FROM peer_records", [], |r| r.get(0))?;
        if !known && usize::try_from(count).unwrap_or(usize::MAX) >= MAX_PEER_RECORDS {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO peer_records (member_id, record, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(member_id) DO UPDATE SET record = excluded.record,
                updated_ms = excluded.updated_ms",
            params![member.0, record, to_sql_int(now_ms())?],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Every record kept, with its member.
    pub fn peer_records(&self) -> Result<Vec<(MemberId, Vec<u8>)>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT member_id, record FROM peer_records")?;
        let rows = statement.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (member, record): (Vec<u8>, Vec<u8>) = row?;
            let key = format!("peer record {}", hex(&member));
            let member = <[u8; 32]>::try_from(member.as_slice())
                .map(MemberId)
                .map_err(|_| {
                    Corrupt::new("peer_records", key.clone(), "member id is not 32 bytes")
                })?;
            if record.len() > MAX_PEER_RECORD_LEN {
                return Err(Corrupt::new("peer_records", key, "record too long").into());
            }
            out.push((member, record));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_is_kept_replaced_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), None).unwrap();
        let member = MemberId([7; 32]);
        assert!(store.put_peer_record(&member, b"first").unwrap());
        assert!(store.put_peer_record(&member, b"second").unwrap());
        assert_eq!(
            store.peer_records().unwrap(),
            vec![(member, b"second".to_vec())]
        );
        let too_long = vec![0u8; MAX_PEER_RECORD_LEN + 1];
        assert!(store.put_peer_record(&member, &too_long).is_err());
        drop(store);
        let store = Store::open(dir.path(), None).unwrap();
        assert_eq!(
            store.peer_records().unwrap().len(),
            1,
            "kept across a reopen"
        );
    }
}
