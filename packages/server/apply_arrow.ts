// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * apache-arrow, typed by `apply_arrow.d.ts` (see there why). Import Arrow from here, not from
 * `apache-arrow`, anywhere `@valise/server` is in the same program.
 *
 * @module
 */
// @ts-types="./apply_arrow.d.ts"
export * from "apache-arrow";
