/**
 * What the library prints, captured for assertions.
 * @module
 */

/** Runs `body` with console.error captured (the library's warning printer); the lines printed. */
export async function capturingStderr(body: () => Promise<void>): Promise<string[]> {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  try {
    await body();
  } finally {
    console.error = original;
  }
  return lines;
}
