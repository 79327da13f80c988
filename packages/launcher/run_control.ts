// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * {@linkcode RunControl}: what a caller does to a run while it runs, beside its stdin.
 *
 * @module
 */

/** Runs a control is attached to: a control belongs to one run at a time. */
const attached = new WeakMap<RunControl, () => void>();

/**
 * Interrupts a run: SIGINT to its process group, as Ctrl-C on a terminal does (Python raises
 * `KeyboardInterrupt`; its console then shows a new prompt). Give it as `RunSpec.control`.
 *
 * @example
 * ```ts ignore
 * const control = new RunControl();
 * const events = launcher.run(session, { repl: true, stdin, interactive: true, control });
 * // later, on the user's Ctrl-C:
 * control.interrupt();
 * ```
 */
export class RunControl {
  /**
   * Sends SIGINT to the run's process group. Before the run's process has started (or set up
   * its process group), and after it ended, the interrupt is lost.
   *
   * @returns Whether a run was there to send it to.
   */
  interrupt(): boolean {
    const send = attached.get(this);
    send?.();
    return send !== undefined;
  }
}

/**
 * Attaches a control to a run until the returned function is called.
 *
 * @param control The control.
 * @param interrupt Sends the run an interrupt.
 * @returns Detaches it.
 * @throws {TypeError} When the control is attached to another run.
 */
export function attachRunControl(control: RunControl, interrupt: () => void): () => void {
  if (!(control instanceof RunControl)) {
    throw new TypeError("Cannot run: control must be a RunControl");
  }
  if (attached.has(control)) {
    throw new TypeError("Cannot run: the RunControl already belongs to a run that is running");
  }
  attached.set(control, interrupt);
  return () => {
    if (attached.get(control) === interrupt) attached.delete(control);
  };
}
