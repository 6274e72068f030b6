// A synthetic German -> English parallel corpus with real structure, for a translation demo that trains in minutes
// on a CPU (../shared/mechanisms/transformer.md: the De-En task of P6, in miniature).
//
// The source is a small fragment of German grammar over a fixed vocabulary of real words (about 45 nouns of three
// genders, 30 verbs, 18 adjectives, 8 adverbs, 4 modals, 3 prepositions, 4 conjunctions); the seed only draws the
// sentences. Grammar of the source:
//   - case marking: articles (der/den/dem, die/die/der, das/das/dem; ein/einen/einem, eine/eine/einer, ein/ein/einem)
//     and adjective endings (weak after the definite, mixed after the indefinite article) mark nominative,
//     accusative and dative; prepositions (mit, von, neben) take the dative;
//   - main clauses are verb-second: the first field holds the subject, the accusative or dative object, a time or
//     frequency adverb or the prepositional phrase; the accusative may also precede the subject inside the clause.
//     An object goes before the subject only when subject or object is masculine, the only gender whose nominative
//     and accusative differ, so every source sentence has exactly one reading;
//   - the rest of the verb goes to the end: a separable particle (ruft ... an), a participle after haben/sein
//     (hat ... gesehen, ist ... angekommen), an infinitive after a modal (kann ... sehen);
//   - subordinate clauses after weil, obwohl, wenn and (after sagen, glauben, wissen, hoffen) dass are verb-final
//     (..., weil der Mann den Hund gesehen hat); a fronted subordinate clause puts the main verb first
//     (Weil die Frau schläft, lacht der Mann.);
//   - negation by nicht after the objects.
// The English side is SVO with its own rules: do-support under negation (does not see), cannot / does not want to,
// indirect objects as "to" phrases after the direct object, frequency adverbs before the main verb, time adverbs
// at the end, a/an by the next word, no comma before because/although/when. The English is a function of the
// German sentence alone (never word by word), so a model can reach a BLEU near 100. Sentences have 4 to 25 words.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "longseq/parallel.h"

namespace longseq {

// `pairs` sentence pairs (German source, English target) drawn with `seed`; the same seed gives the same corpus.
ParallelText synthetic_translation_corpus(int64_t pairs, uint64_t seed);

// The nouns of the vocabulary as (German, English) pairs: a gloss for tests and demos.
std::vector<std::pair<std::string, std::string>> synthetic_translation_nouns();

}  // namespace longseq
