//! Mapping rows against the table as it exists: which columns to add (declared, or new payload
//! fields with `auto_columns`) and whether each value fits its column. Shared by both stores so
//! they accept and refuse exactly the same values.

use std::collections::HashMap;

use crate::readings::mapping::{ColType, Ident, MappedRow, Mapping, SqlValue};

fn fits(ty: ColType, v: &SqlValue) -> bool {
    match (ty, v) {
        (_, SqlValue::Null) => true,
        (ColType::Real, SqlValue::Real(_) | SqlValue::Integer(_)) => true,
        (ColType::Integer, SqlValue::Integer(_)) => true,
        (ColType::Integer, SqlValue::Real(f)) => f.fract() == 0.0 && f.abs() < 9.0e15,
        (ColType::Text, SqlValue::Text(_)) => true,
        (ColType::Boolean, SqlValue::Bool(_)) => true,
        (ColType::Timestamp, SqlValue::Time(_)) => true,
        _ => false,
    }
}

/// Columns to add to the table, then the values to insert.
pub type Planned = (Vec<(Ident, ColType)>, Vec<(Ident, SqlValue)>);

/// Columns to add and values to insert, or why the row does not fit. `existing` is updated with
/// the columns this row adds, so later rows of the batch see them.
pub fn plan(
    m: &Mapping,
    row: &MappedRow,
    existing: &mut HashMap<String, ColType>,
) -> Result<Planned, String> {
    let mut add = Vec::new();
    for c in &m.columns {
        if !existing.contains_key(c.name.as_str()) {
            add.push((c.name.clone(), c.ty));
        }
    }
    for (name, ty) in &row.new_columns {
        if !existing.contains_key(name.as_str()) && !add.iter().any(|(n, _)| n == name) {
            add.push((name.clone(), *ty));
        }
    }
    let types: HashMap<&str, ColType> = existing
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .chain(add.iter().map(|(n, t)| (n.as_str(), *t)))
        .collect();
    let mut values = Vec::new();
    for (name, v) in &row.values {
        let Some(ty) = types.get(name.as_str()) else {
            continue;
        };
        if !fits(*ty, v) {
            return Err(format!(
                "mapping `{}`: column `{}` is {} and cannot hold {v:?}",
                m.table.as_str(),
                name.as_str(),
                ty.sqlite().to_lowercase()
            ));
        }
        values.push((name.clone(), v.clone()));
    }
    for (n, t) in &add {
        existing.insert(n.as_str().to_string(), *t);
    }
    Ok((add, values))
}

/// A column type read back from a database's type name.
pub fn col_type(name: &str) -> ColType {
    let n = name.to_ascii_lowercase();
    if n.contains("int") {
        ColType::Integer
    } else if n.contains("real") || n.contains("double") || n.contains("float") || n.contains("numeric") {
        ColType::Real
    } else if n.contains("bool") {
        ColType::Boolean
    } else if n.contains("date") || n.contains("time") {
        ColType::Timestamp
    } else {
        ColType::Text
    }
}
