//! An engine as the scheduler works on it: parsed from its key, in checked units.

use super::*;

/// An engine that passed validation, in checked units.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpec {
    pub id: EngineId,
    pub addr: String,
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    /// Disk in MB (0: none offered).
    pub disk: DiskMb,
    /// The seed's `key=value` (or bare `key`) strings.
    pub labels: Vec<String>,
    pub cordoned: bool,
    /// Its service placements move elsewhere (implies cordoned).
    pub drained: bool,
    /// The wire form, echoed into decisions.
    pub wire: Engine,
}

impl EngineSpec {
    /// Parses `engines/<id>`'s value; the key's id wins over a missing or mismatched JSON `id`.
    pub fn parse(id: &EngineId, raw: &[u8]) -> Result<EngineSpec, Invalid> {
        // The id comes from the key: the grammar request ids obey (printable, no `/`, at most
        // 253 bytes), or no command line nor Docker label could ever name the engine.
        id.check().map_err(|e| Invalid(format!("id: {e}")))?;
        let mut wire: Engine = serde_json::from_slice::<serde_json::Value>(raw)
            .map_err(|e| Invalid(format!("malformed JSON: {e}")))
            .and_then(|v| {
                serde_path_to_error::deserialize(v).map_err(|e| {
                    Invalid(format!(
                        "{}: {}",
                        shown_path(e.path()),
                        shown_data_error(e.inner())
                    ))
                })
            })?;
        if !wire.id.is_empty() && wire.id != id.as_str() {
            return Err(Invalid(
                "id: does not match the id in the engine's key".into(),
            ));
        }
        wire.id = id.to_string();
        let cpus = check_amount("cpus", Some(wire.cpus), MAX_CPUS, " cpus")?;
        let memory = check_amount("memory", Some(wire.memory), MAX_MEMORY_MB, " MB")?;
        let disk = if wire.disk == 0.0 {
            0.0
        } else {
            check_amount("disk", Some(wire.disk), MAX_MEMORY_MB, " MB")?
        };
        Ok(EngineSpec {
            id: id.clone(),
            addr: wire.addr.clone(),
            cpus: Millicpus::from_cpus_floor(cpus),
            memory: MemoryMb::from_mb_floor(memory),
            disk: DiskMb::from_mb_floor(disk),
            labels: wire.labels.clone(),
            cordoned: wire.cordoned || wire.drained,
            drained: wire.drained,
            wire,
        })
    }
}
