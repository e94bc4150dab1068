/**
 * One-time notices about settings that came from a default because the weights cannot tell
 * them (an activation, a head count): said once per process per (source, setting), on stderr,
 * so that a run loading the same checkpoint many times says it once. Internal to `lib/model`.
 *
 * @example
 * ```ts
 * noteDefaultSetting("m.safetensors", "act", "m.safetensors: assuming quick_gelu"); // true
 * noteDefaultSetting("m.safetensors", "act", "m.safetensors: assuming quick_gelu"); // false
 * ```
 * @module
 */

const noted = new Set<string>();

/**
 * Prints `message` (prefixed `deer: `) to stderr unless it was already printed for this
 * `source` and `setting` in this process; returns whether it printed.
 *
 * @example
 * ```ts
 * noteDefaultSetting("<tensors>", "heads", "<tensors>: assuming 12 heads");
 * ```
 */
export function noteDefaultSetting(source: string, setting: string, message: string): boolean {
  const key = JSON.stringify([source, setting]);
  if (noted.has(key)) return false;
  noted.add(key);
  console.error(`deer: ${message}`);
  return true;
}
