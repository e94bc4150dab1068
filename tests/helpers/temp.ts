/**
 * Temporary folders for tests that write files.
 * @module
 */

/**
 * Runs `fn` with a fresh temporary folder (its name starting with `prefix`, when given) and
 * removes the folder afterwards, whatever happens.
 */
export async function withDir(
  fn: (dir: string) => Promise<void>,
  prefix?: string,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
