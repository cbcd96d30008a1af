import { strict as assert } from "node:assert";
import { largestFirst, parseSize, planPageRanges } from "./chunks.ts";

const MB = 1024 * 1024;

Deno.test("planPageRanges keeps small or unsplittable tables whole", () => {
  assert.deepEqual(planPageRanges({ bytes: 10 * MB, pages: 1280 }, 256 * MB, true), [
    { from: 0, to: null },
  ]);
  assert.deepEqual(planPageRanges({ bytes: 1000 * MB, pages: 128000 }, 256 * MB, false), [
    { from: 0, to: null },
  ]);
  assert.deepEqual(planPageRanges({ bytes: 0, pages: 0 }, 1, true), [{ from: 0, to: null }]);
});

Deno.test("planPageRanges covers every page once and leaves the last range open", () => {
  const cases: [number, number, number][] = [
    // bytes, pages, chunk bytes
    [1000 * MB, 128000, 256 * MB],
    [257 * MB, 32896, 256 * MB],
    [3 * MB, 3, 1 * MB],
    [100 * MB, 7, 1 * MB], // more chunks wanted than pages: one page each at most
  ];
  for (const [bytes, pages, chunk] of cases) {
    const ranges = planPageRanges({ bytes, pages }, chunk, true);
    assert.ok(ranges.length >= 2, `${bytes}/${pages} is split`);
    assert.ok(ranges.length <= pages);
    assert.equal(ranges[0].from, 0);
    for (let i = 1; i < ranges.length; i++) assert.equal(ranges[i].from, ranges[i - 1].to);
    assert.equal(ranges.at(-1)!.to, null);
    assert.ok(ranges.at(-1)!.from < pages);
  }
});

Deno.test("largestFirst sorts by bytes descending without changing the input", () => {
  const input = [{ bytes: 1 }, { bytes: 3 }, { bytes: 2 }];
  assert.deepEqual(largestFirst(input).map((x) => x.bytes), [3, 2, 1]);
  assert.deepEqual(input.map((x) => x.bytes), [1, 3, 2]);
});

Deno.test("parseSize reads byte counts and k/M/G suffixes", () => {
  assert.equal(parseSize("256MB"), 256 * MB);
  assert.equal(parseSize("1GiB"), 1024 * MB);
  assert.equal(parseSize("64k"), 65536);
  assert.equal(parseSize("123"), 123);
  assert.equal(parseSize("12 parsecs"), undefined);
});
