// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * {@linkcode RunControl}: what a caller does to a run while it runs, beside its stdin.
 *
 * @module
 */

/** The call a control is attached to: a control belongs to one run at a time. */
const attached = new WeakMap<RunControl, () => void>();

/**
 * Interrupts a run as Ctrl-C does on a terminal: the server sends SIGINT to the run's process
 * group, so Python raises `KeyboardInterrupt` (its console then shows a new prompt; a program
 * that does not catch it ends, killed by SIGINT). Give it as `RunOptions.control`: the run then
 * streams its stdin (`WorkerService/RunInteractive`).
 *
 * @example
 * ```ts ignore
 * const control = new RunControl();
 * Deno.addSignalListener("SIGINT", () => control.interrupt());
 * for await (const ev of session.run({ repl: true, stdin: Deno.stdin.readable, control })) {
 *   if (ev.kind === "stdout") await Deno.stdout.write(ev.data);
 * }
 * ```
 */
export class RunControl {
  /**
   * Sends an interrupt, in order with the stdin sent before it. Before the call has started,
   * and after it ended, there is no run to interrupt; one sent before the worker's process set
   * itself up is lost.
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
 * Attaches a control to a call until the returned function is called.
 *
 * @param control The control.
 * @param interrupt Sends the call an interrupt.
 * @returns Detaches it.
 * @throws {TypeError} When the control is attached to another call.
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
