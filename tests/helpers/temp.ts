/**
 * Temporary folders for tests that write files.
 * @module
 */

/** Runs `fn` with a fresh temporary folder and removes the folder afterwards, whatever happens. */
export async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
