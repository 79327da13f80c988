// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The Apply driver's protocol constants, defined here once, and the program that starts it: its
 * Python source lives in `apply_driver.py` (stdlib only, Python 3.8+), which the server runs as
 * an ordinary launcher run (`code`, streamed stdin, flow-controlled stdout), so it gets the
 * session's interpreter, working directory, `sys.path`, environment, sandbox and limits. See
 * `docs/apply.md` for the frames and the columnar encoding.
 *
 * Frames both ways: `u32 length (of what follows, big-endian) | u8 type | payload`.
 *
 * @module
 */
import { pythonStub } from "@valise/launcher";
import DRIVER_SOURCE_TEXT from "./apply_driver.py" with { type: "text" };

/** Frame types of the driver protocol. */
export const DriverFrame = {
  /** Server → driver: JSON: the function, form, transport and declared output columns. */
  START: 1,
  /** Server → driver: one columnar batch, or a chunk of the Arrow IPC input stream. */
  DATA: 2,
  /** Server → driver: the input has ended. */
  END: 3,
  /** Driver → server, first: JSON `{executable, version, pyarrow, pandas}` (versions or null). */
  HELLO: 10,
  /** Driver → server: one columnar output batch, or a chunk of the Arrow IPC output stream. */
  OUT: 11,
  /** Driver → server: JSON `{errorClass, message, traceback}`; the driver then exits. */
  ERROR: 12,
  /** Driver → server: JSON `{rowsIn, rowsOut, batchesIn, batchesOut}`; the last frame. */
  DONE: 13,
} as const;

/** The file name the driver is compiled under (its frames are stripped from what users see). */
export const DRIVER_FILENAME = "@valise/server/apply_driver.py";

/** Source of the driver, as in `apply_driver.py`. */
export const DRIVER_SOURCE: string = DRIVER_SOURCE_TEXT;

/** The program the launcher runs: the constants, then the driver compiled under its file name. */
export const DRIVER_STUB: string = pythonStub(DRIVER_SOURCE_TEXT, DRIVER_FILENAME, {
  frames: DriverFrame,
  file: DRIVER_FILENAME,
});
