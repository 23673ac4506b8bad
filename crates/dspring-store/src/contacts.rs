//! Contacts: people this device knows, with what is needed to reach and add them.

use dspring_proto::MemberId;
use dspring_proto::codec::{Reader, Writer};
use dspring_proto::identity::PrekeyBundle;
use rusqlite::{OptionalExtension, params};

use crate::error::{Corrupt, StoreError};
use crate::{Store, hex, now_ms, to_sql_int};

/// Longest display name, in bytes: room for any real name, not for a payload.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
/// Most addresses kept per contact: a few transports times a few networks.
pub const MAX_ADDRESSES: usize = 16;
/// Longest address (a multiaddr with a relay hop and an onion address fits easily).
pub const MAX_ADDRESS_LEN: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    pub member: MemberId,
    pub display_name: String,
    /// The user compared safety numbers with this person.
    pub verified: bool,
    /// Last known network addresses.
    pub addresses: Vec<String>,
    /// Their prekey bundle, to add them to a group while they are offline.
    pub bundle: Option<PrekeyBundle>,
}

impl Contact {
    fn check(&self) -> Result<(), StoreError> {
        if self.display_name.len() > MAX_DISPLAY_NAME_LEN {
            return Err(StoreError::invalid("display name too long"));
        }
        if self.addresses.len() > MAX_ADDRESSES
            || self.addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN)
        {
            return Err(StoreError::invalid("too many or too long addresses"));
        }
        if let Some(bundle) = &self.bundle
            && bundle.identity != self.member
        {
            return Err(StoreError::invalid("prekey bundle of another identity"));
        }
        Ok(())
    }
}

fn decode_addresses(bytes: &[u8], key: &str) -> Result<Vec<String>, Corrupt> {
    let addresses: Vec<String> =
        postcard::from_bytes(bytes).map_err(|e| Corrupt::new("contacts", key, e))?;
    if addresses.len() > MAX_ADDRESSES || addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
        return Err(Corrupt::new("contacts", key, "addresses beyond the limits"));
    }
    Ok(addresses)
}

type ContactRow = (Vec<u8>, String, bool, Vec<u8>, Option<Vec<u8>>);

fn contact_from(row: ContactRow) -> Result<Contact, Corrupt> {
    let (member, display_name, verified, addresses, bundle) = row;
    let key = format!("contact {}", hex(&member));
    let member = <[u8; 32]>::try_from(member.as_slice())
        .map(MemberId)
        .map_err(|_| Corrupt::new("contacts", key.clone(), "member id is not 32 bytes"))?;
    if display_name.len() > MAX_DISPLAY_NAME_LEN {
        return Err(Corrupt::new("contacts", key, "display name too long"));
    }
    let addresses = decode_addresses(&addresses, &key)?;
    let bundle = bundle
        .map(|bytes| {
            let mut reader = Reader::new(&bytes);
            let bundle = PrekeyBundle::decode(&mut reader)?;
            reader.finish()?;
            Ok(bundle)
        })
        .transpose()
        .map_err(|e: dspring_proto::codec::DecodeError| Corrupt::new("contacts", key, e))?;
    Ok(Contact {
        member,
        display_name,
        verified,
        addresses,
        bundle,
    })
}

const CONTACT_COLUMNS: &str = "member_id, display_name, verified, addresses, bundle";

impl Store {
    /// Adds or replaces a contact.
    pub fn put_contact(&mut self, contact: &Contact) -> Result<(), StoreError> {
        contact.check()?;
        let addresses = postcard::to_allocvec(&contact.addresses)
            .map_err(|e| StoreError::invalid(e.to_string()))?;
        let bundle = contact.bundle.as_ref().map(|b| {
            let mut w = Writer::new();
            b.encode(&mut w);
            w.into_bytes()
        });
        self.conn.execute(
            "INSERT INTO contacts (member_id, display_name, verified, addresses, bundle, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(member_id) DO UPDATE SET display_name = excluded.display_name,
                verified = excluded.verified, addresses = excluded.addresses,
                bundle = excluded.bundle, updated_ms = excluded.updated_ms",
            params![
                contact.member.0,
                contact.display_name,
                contact.verified,
                addresses,
                bundle,
                to_sql_int(now_ms())?
            ],
        )?;
        Ok(())
    }

    pub fn contact(&self, member: &MemberId) -> Result<Option<Contact>, StoreError> {
        let row: Option<ContactRow> = self
            .conn
            .query_row(
                &format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE member_id = ?1"),
                [member.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        Ok(row.map(contact_from).transpose()?)
    }

    /// Every contact, ordered by display name.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts ORDER BY display_name, member_id"
        ))?;
        let rows = statement.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(contact_from(row?)?);
        }
        Ok(out)
    }

    /// Marks a contact verified (or not); false if there is no such contact.
    pub fn set_contact_verified(
        &mut self,
        member: &MemberId,
        verified: bool,
    ) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE contacts SET verified = ?2 WHERE member_id = ?1",
            params![member.0, verified],
        )?;
        Ok(changed > 0)
    }

    pub fn remove_contact(&mut self, member: &MemberId) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute("DELETE FROM contacts WHERE member_id = ?1", [member.0])?;
        Ok(changed > 0)
    }
}
