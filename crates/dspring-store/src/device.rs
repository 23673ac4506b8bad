//! The device identity and its prekeys. The identity key and signed prekeys are one sealed
//! row; each one-time prekey is its own sealed row, deleted in the transaction that uses it.

use dspring_proto::{Device, Secret};
use rusqlite::{OptionalExtension, params};
use zeroize::Zeroizing;

use crate::error::{Corrupt, StoreError};
use crate::{Store, from_sql_int};

const DEVICE_PLACE: &[u8] = b"device";

fn prekey_place(id: u32) -> Vec<u8> {
    format!("one_time_prekeys/{id}").into_bytes()
}

impl Store {
    /// Stores this node's device the first time; refuses to replace an existing identity.
    pub fn create_device(&mut self, device: &Device) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists: Option<i64> = tx
            .query_row("SELECT id FROM device", [], |r| r.get(0))
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::invalid(
                "this store already has a device identity",
            ));
        }
        drop(tx);
        self.save_device(device)
    }

    /// Writes the device: the identity and signed prekeys (replaced), and one-time prekeys
    /// newer than any stored before. A one-time prekey that was used and deleted is never
    /// written back, even from a stale copy of the device.
    pub fn save_device(&mut self, device: &Device) -> Result<(), StoreError> {
        let mut rest = device.clone();
        let one_time = rest.prekeys.take_one_time();
        let blob = Zeroizing::new(
            postcard::to_allocvec(&rest)
                .map_err(|e| StoreError::invalid(format!("device does not serialize: {e}")))?,
        );
        let sealed = self
            .key
            .seal(DEVICE_PLACE, &blob)
            .map_err(|e| StoreError::invalid(e.to_string()))?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO device (id, member_id, sealed) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET member_id = excluded.member_id, sealed = excluded.sealed",
            params![device.id().0, sealed],
        )?;
        let high: Option<Vec<u8>> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'one_time_prekey_high'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let high = match high {
            None => None,
            Some(bytes) => {
                Some(u32::from_be_bytes(bytes.as_slice().try_into().map_err(
                    |_| Corrupt::new("meta", "one_time_prekey_high", "not 4 bytes"),
                )?))
            }
        };
        let mut newest = high;
        for (id, secret) in one_time.iter() {
            if high.is_some_and(|high| *id <= high) {
                continue;
            }
            let sealed = self
                .key
                .seal(&prekey_place(*id), secret.expose())
                .map_err(|e| StoreError::invalid(e.to_string()))?;
            tx.prepare_cached("INSERT INTO one_time_prekeys (id, sealed) VALUES (?1, ?2)")?
                .execute(params![id, sealed])?;
            newest = Some(newest.map_or(*id, |n: u32| n.max(*id)));
        }
        if let Some(newest) = newest {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('one_time_prekey_high', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [newest.to_be_bytes().to_vec()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// This node's device with its unused one-time prekeys, if one was stored.
    pub fn device(&self) -> Result<Option<Device>, StoreError> {
        let row: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT sealed FROM device WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        let Some(sealed) = row else {
            return Ok(None);
        };
        let blob = self
            .key
            .open(DEVICE_PLACE, &sealed)
            .map_err(|e| Corrupt::new("device", "identity", e))?;
        let mut device: Device =
            postcard::from_bytes(&blob).map_err(|e| Corrupt::new("device", "identity", e))?;
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, sealed FROM one_time_prekeys ORDER BY id")?;
        let rows =
            statement.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        for row in rows {
            let (id, sealed) = row?;
            let key = format!("prekey {id}");
            let secret = self
                .key
                .open(&prekey_place(id), &sealed)
                .map_err(|e| Corrupt::new("one_time_prekeys", key.clone(), e))?;
            let secret: [u8; 32] = secret
                .as_slice()
                .try_into()
                .map_err(|_| Corrupt::new("one_time_prekeys", key, "not 32 bytes"))?;
            device
                .prekeys
                .restore_one_time(id, Secret::from_bytes(secret));
        }
        Ok(Some(device))
    }

    /// Picks an unused one-time prekey to publish in a bundle and marks it handed out, so that
    /// no two contacts get the same one. `None` when all are handed out: publish more.
    pub fn hand_out_one_time_prekey(&mut self) -> Result<Option<u32>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "UPDATE one_time_prekeys SET handed_out = 1
                 WHERE id = (SELECT min(id) FROM one_time_prekeys WHERE handed_out = 0)
                 RETURNING id",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// One-time prekeys not yet handed out.
    pub fn one_time_prekeys_available(&self) -> Result<u64, StoreError> {
        let count: i64 = self.conn.query_row(
            "SELECT count(*) FROM one_time_prekeys WHERE handed_out = 0",
            [],
            |r| r.get(0),
        )?;
        Ok(from_sql_int(count, "one_time_prekeys", "count")?)
    }
}
