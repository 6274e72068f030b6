// The synthetic German -> English corpus (grammar in synthetic_translation.h). A sentence is drawn as a structure
// (clauses of a verb, noun phrases with their roles, adverbs, tense) and rendered twice, once per language, so the
// English is a function of the structure; the German renders every choice that changes the English and the
// object-first orders are drawn only where case marking disambiguates them, so it is a function of the German.
#include "longseq/synthetic_translation.h"

#include <random>

#include "longseq/common.h"

namespace longseq {

namespace {

enum Gender { kMasc, kFem, kNeut };
enum Case { kNom, kAcc, kDat };

struct SynNoun {
  const char* de;
  Gender gender;
  const char* en;
};

const SynNoun kSynNouns[] = {
    {"Hund", kMasc, "dog"},        {"Mann", kMasc, "man"},          {"Lehrer", kMasc, "teacher"},
    {"Vogel", kMasc, "bird"},      {"Koch", kMasc, "cook"},         {"Onkel", kMasc, "uncle"},
    {"Arzt", kMasc, "doctor"},     {"König", kMasc, "king"},        {"Fisch", kMasc, "fish"},
    {"Apfel", kMasc, "apple"},     {"Brief", kMasc, "letter"},      {"Ball", kMasc, "ball"},
    {"Schlüssel", kMasc, "key"},   {"Tisch", kMasc, "table"},       {"Wagen", kMasc, "wagon"},
    {"Freund", kMasc, "friend"},   {"Frau", kFem, "woman"},         {"Katze", kFem, "cat"},
    {"Maus", kFem, "mouse"},       {"Blume", kFem, "flower"},       {"Tür", kFem, "door"},
    {"Lampe", kFem, "lamp"},       {"Königin", kFem, "queen"},      {"Schwester", kFem, "sister"},
    {"Mutter", kFem, "mother"},    {"Tochter", kFem, "daughter"},   {"Zeitung", kFem, "newspaper"},
    {"Tasche", kFem, "bag"},       {"Uhr", kFem, "clock"},          {"Ärztin", kFem, "physician"},
    {"Kind", kNeut, "child"},      {"Mädchen", kNeut, "girl"},      {"Pferd", kNeut, "horse"},
    {"Buch", kNeut, "book"},       {"Haus", kNeut, "house"},        {"Brot", kNeut, "bread"},
    {"Fenster", kNeut, "window"},  {"Geschenk", kNeut, "gift"},     {"Bild", kNeut, "picture"},
    {"Schaf", kNeut, "sheep"},     {"Lied", kNeut, "song"},         {"Ei", kNeut, "egg"},
    {"Auto", kNeut, "car"},        {"Boot", kNeut, "boat"},         {"Zimmer", kNeut, "room"},
};

const struct {
  const char* de;  // stem: endings -e, -en, -er, -es follow
  const char* en;
} kSynAdjectives[] = {
    {"alt", "old"},     {"jung", "young"},    {"groß", "big"},       {"klein", "small"},  {"rot", "red"},
    {"blau", "blue"},   {"grün", "green"},    {"neu", "new"},        {"klug", "clever"},  {"arm", "poor"},
    {"reich", "rich"},  {"schön", "beautiful"}, {"krank", "sick"},   {"wild", "wild"},    {"hungrig", "hungry"},
    {"freundlich", "friendly"}, {"laut", "loud"}, {"bös", "angry"},
};

enum Frame { kIntransitive, kTransitive, kDitransitive, kClausal };

struct SynVerb {
  const char* de3;       // 3rd person singular present, without a separable particle
  const char* particle;  // "" or the separable prefix, which goes to the end of a main clause
  const char* inf;       // infinitive, particle included
  const char* pp;        // past participle, particle included
  bool sein;             // perfect with sein instead of haben
  Frame frame;
  const char* en3;  // English 3rd person singular, past participle, bare infinitive
  const char* en_pp;
  const char* en_inf;
};

const SynVerb kSynVerbs[] = {
    {"schläft", "", "schlafen", "geschlafen", false, kIntransitive, "sleeps", "slept", "sleep"},
    {"lacht", "", "lachen", "gelacht", false, kIntransitive, "laughs", "laughed", "laugh"},
    {"singt", "", "singen", "gesungen", false, kIntransitive, "sings", "sung", "sing"},
    {"arbeitet", "", "arbeiten", "gearbeitet", false, kIntransitive, "works", "worked", "work"},
    {"wartet", "", "warten", "gewartet", false, kIntransitive, "waits", "waited", "wait"},
    {"tanzt", "", "tanzen", "getanzt", false, kIntransitive, "dances", "danced", "dance"},
    {"schläft", "ein", "einschlafen", "eingeschlafen", true, kIntransitive, "falls asleep", "fallen asleep",
     "fall asleep"},
    {"kommt", "an", "ankommen", "angekommen", true, kIntransitive, "arrives", "arrived", "arrive"},
    {"läuft", "", "laufen", "gelaufen", true, kIntransitive, "runs", "run", "run"},
    {"sieht", "", "sehen", "gesehen", false, kTransitive, "sees", "seen", "see"},
    {"findet", "", "finden", "gefunden", false, kTransitive, "finds", "found", "find"},
    {"sucht", "", "suchen", "gesucht", false, kTransitive, "looks for", "looked for", "look for"},
    {"kauft", "", "kaufen", "gekauft", false, kTransitive, "buys", "bought", "buy"},
    {"liebt", "", "lieben", "geliebt", false, kTransitive, "loves", "loved", "love"},
    {"fragt", "", "fragen", "gefragt", false, kTransitive, "asks", "asked", "ask"},
    {"besucht", "", "besuchen", "besucht", false, kTransitive, "visits", "visited", "visit"},
    {"malt", "", "malen", "gemalt", false, kTransitive, "paints", "painted", "paint"},
    {"trägt", "", "tragen", "getragen", false, kTransitive, "carries", "carried", "carry"},
    {"ruft", "an", "anrufen", "angerufen", false, kTransitive, "calls", "called", "call"},
    {"macht", "auf", "aufmachen", "aufgemacht", false, kTransitive, "opens", "opened", "open"},
    {"macht", "zu", "zumachen", "zugemacht", false, kTransitive, "closes", "closed", "close"},
    {"nimmt", "mit", "mitnehmen", "mitgenommen", false, kTransitive, "takes", "taken", "take"},
    {"schaut", "an", "anschauen", "angeschaut", false, kTransitive, "looks at", "looked at", "look at"},
    {"gibt", "", "geben", "gegeben", false, kDitransitive, "gives", "given", "give"},
    {"zeigt", "", "zeigen", "gezeigt", false, kDitransitive, "shows", "shown", "show"},
    {"bringt", "", "bringen", "gebracht", false, kDitransitive, "brings", "brought", "bring"},
    {"schickt", "", "schicken", "geschickt", false, kDitransitive, "sends", "sent", "send"},
    {"erklärt", "", "erklären", "erklärt", false, kDitransitive, "explains", "explained", "explain"},
    {"sagt", "", "sagen", "gesagt", false, kClausal, "says", "said", "say"},
    {"glaubt", "", "glauben", "geglaubt", false, kClausal, "believes", "believed", "believe"},
    {"weiß", "", "wissen", "gewusst", false, kClausal, "knows", "known", "know"},
    {"hofft", "", "hoffen", "gehofft", false, kClausal, "hopes", "hoped", "hope"},
};

const struct {
  const char *de, *en, *en_neg;
} kSynModals[] = {{"kann", "can", "cannot"}, {"muss", "must", "must not"}, {"will", "wants to", "does not want to"},
                  {"darf", "may", "may not"}};

const struct {
  const char *de, *en;
} kSynTimes[] = {{"heute", "today"}, {"jetzt", "now"}, {"morgens", "in the morning"}, {"abends", "in the evening"}},
  kSynFrequencies[] = {{"oft", "often"}, {"immer", "always"}, {"selten", "rarely"}, {"manchmal", "sometimes"}},
  kSynPrepositions[] = {{"mit", "with"}, {"von", "from"}, {"neben", "next to"}},  // all take the dative
  kSynConjunctions[] = {{"weil", "because"}, {"obwohl", "although"}, {"wenn", "when"}};

template <typename T, size_t N>
constexpr size_t count_of(const T (&)[N]) {
  return N;
}

const char* const kSynDefinite[3][3] = {{"der", "die", "das"}, {"den", "die", "das"}, {"dem", "der", "dem"}};
const char* const kSynIndefinite[3][3] = {
    {"ein", "eine", "ein"}, {"einen", "eine", "ein"}, {"einem", "einer", "einem"}};
// Weak endings after the definite article, mixed endings after the indefinite one: [case][gender].
const char* const kSynWeakEnding[3][3] = {{"e", "e", "e"}, {"en", "e", "e"}, {"en", "en", "en"}};
const char* const kSynMixedEnding[3][3] = {{"er", "e", "es"}, {"en", "e", "es"}, {"en", "en", "en"}};

struct NounPhrase {
  int noun = 0, adjective = -1;
  bool definite = true;
};

std::string german(const NounPhrase& np, Case c) {
  const Gender g = kSynNouns[np.noun].gender;
  std::string out = np.definite ? kSynDefinite[c][g] : kSynIndefinite[c][g];
  if (np.adjective >= 0)
    out += std::string(" ") + kSynAdjectives[np.adjective].de + (np.definite ? kSynWeakEnding : kSynMixedEnding)[c][g];
  return out + " " + kSynNouns[np.noun].de;
}

std::string english(const NounPhrase& np) {
  const std::string rest =
      (np.adjective >= 0 ? std::string(kSynAdjectives[np.adjective].en) + " " : std::string()) + kSynNouns[np.noun].en;
  if (np.definite) return "the " + rest;
  return (std::string("aeiou").find(rest[0]) != std::string::npos ? "an " : "a ") + rest;
}

enum Tense { kPresent, kPerfect, kModal };
enum Field { kSubject, kAccusative, kDative, kTime, kFrequency, kPrepositional };

struct Clause {
  int verb = 0;
  NounPhrase subject, accusative, dative, object_of_preposition;
  int time = -1, frequency = -1, preposition = -1, modal = 0;
  bool negated = false, scrambled = false;  // scrambled: the accusative before the subject
  Tense tense = kPresent;
  Field topic = kSubject;  // the first field of a main clause
  const SynVerb& v() const { return kSynVerbs[verb]; }
  bool has(Field f) const {
    switch (f) {
      case kSubject: return true;
      case kAccusative: return v().frame == kTransitive || v().frame == kDitransitive;
      case kDative: return v().frame == kDitransitive;
      case kTime: return time >= 0;
      case kFrequency: return frequency >= 0;
      case kPrepositional: return preposition >= 0;
    }
    return false;
  }
  // Nominative and accusative differ only in the masculine: an object-first order is readable only then.
  bool case_disambiguates() const {
    return has(kAccusative) &&
           (kSynNouns[subject.noun].gender == kMasc || kSynNouns[accusative.noun].gender == kMasc);
  }
};

class Generator {
 public:
  explicit Generator(uint64_t seed) : rng_(seed) {}

  // One sentence pair.
  std::pair<std::string, std::string> sentence() {
    const int kind = pick(20);
    Clause main = clause(kind >= 17 ? kClausal : kIntransitive, true);
    std::string de, en;
    if (kind < 11) {  // a main clause alone
      de = main_german(main, false), en = clause_english(main);
    } else if (kind < 14) {  // main clause, then a subordinate clause
      const int conj = pick(count_of(kSynConjunctions));
      Clause sub = clause(kIntransitive, false);
      de = main_german(main, false) + ", " + kSynConjunctions[conj].de + " " + sub_german(sub);
      en = clause_english(main) + " " + kSynConjunctions[conj].en + " " + clause_english(sub);
    } else if (kind < 17) {  // a fronted subordinate clause: the main verb comes first (V2 counts the clause)
      const int conj = pick(count_of(kSynConjunctions));
      Clause sub = clause(kIntransitive, false);
      de = std::string(kSynConjunctions[conj].de) + " " + sub_german(sub) + ", " + main_german(main, true);
      en = std::string(kSynConjunctions[conj].en) + " " + clause_english(sub) + ", " + clause_english(main);
    } else {  // sagen, glauben, wissen, hoffen + dass
      Clause sub = clause(kIntransitive, false);
      de = main_german(main, false) + ", dass " + sub_german(sub);
      en = clause_english(main) + " that " + clause_english(sub);
    }
    return {capitalized(de) + ".", capitalized(en) + "."};
  }

 private:
  std::mt19937_64 rng_;

  int pick(size_t n) { return static_cast<int>(rng_() % n); }  // modulo: identical draws on every platform
  bool chance(int percent) { return pick(100) < percent; }

  NounPhrase noun_phrase() {
    NounPhrase np;
    np.noun = pick(count_of(kSynNouns));
    np.adjective = chance(30) ? pick(count_of(kSynAdjectives)) : -1;
    np.definite = chance(70);
    return np;
  }

  // A clause of a clausal verb (frame kClausal), or of any other verb (frame kIntransitive, meaning "not clausal").
  Clause clause(Frame frame, bool main) {
    Clause c;
    do c.verb = pick(count_of(kSynVerbs));
    while ((c.v().frame == kClausal) != (frame == kClausal));
    c.subject = noun_phrase(), c.accusative = noun_phrase(), c.dative = noun_phrase();
    c.tense = static_cast<Tense>(chance(50) ? kPresent : chance(60) ? kPerfect : kModal);
    c.modal = pick(count_of(kSynModals));
    c.time = chance(25) ? pick(count_of(kSynTimes)) : -1;
    c.negated = chance(15);
    c.frequency = !c.negated && chance(15) ? pick(count_of(kSynFrequencies)) : -1;
    if (frame != kClausal && chance(20)) {
      c.preposition = pick(count_of(kSynPrepositions));
      c.object_of_preposition = noun_phrase();
    }
    if (main) {  // the first field: mostly the subject, else any other field the clause has
      static const Field kWeighted[] = {kSubject, kSubject, kSubject, kSubject, kSubject, kAccusative, kAccusative,
                                        kDative,  kTime,    kTime,    kFrequency, kPrepositional};
      do c.topic = kWeighted[pick(count_of(kWeighted))];
      while (!c.has(c.topic) || (c.topic == kAccusative && !c.case_disambiguates()));
    }
    // In a subordinate clause the subject leads unless scrambled; in a main clause a fronted subject or object
    // leaves nothing to scramble.
    c.scrambled = (!main || (c.topic != kSubject && c.topic != kAccusative)) && c.case_disambiguates() && chance(30);
    return c;
  }

  // The non-empty parts joined by spaces (a middle field or a particle may be empty).
  static std::string words(const std::vector<std::string>& parts) {
    std::string out;
    for (const auto& p : parts)
      if (!p.empty()) out += (out.empty() ? "" : " ") + p;
    return out;
  }

  static std::string field_german(const Clause& c, Field f) {
    switch (f) {
      case kSubject: return german(c.subject, kNom);
      case kAccusative: return german(c.accusative, kAcc);
      case kDative: return german(c.dative, kDat);
      case kTime: return kSynTimes[c.time].de;
      case kFrequency: return kSynFrequencies[c.frequency].de;
      case kPrepositional:
        return std::string(kSynPrepositions[c.preposition].de) + " " + german(c.object_of_preposition, kDat);
    }
    return "";
  }

  // The middle field without the first field: subject, adverbs, dative, accusative, nicht, prepositional phrase.
  static std::string middle_german(const Clause& c, bool skip_topic) {
    std::vector<Field> order = {kSubject, kTime, kFrequency, kDative, kAccusative};
    if (c.scrambled) order = {kAccusative, kSubject, kTime, kFrequency, kDative};
    std::vector<std::string> parts;
    auto wanted = [&](Field f) { return c.has(f) && !(skip_topic && f == c.topic); };
    for (Field f : order)
      if (wanted(f)) parts.push_back(field_german(c, f));
    if (c.negated) parts.push_back("nicht");
    if (wanted(kPrepositional)) parts.push_back(field_german(c, kPrepositional));
    return words(parts);
  }

  // Verb second (verb first after a fronted subordinate clause); the rest of the verb at the end.
  static std::string main_german(const Clause& c, bool verb_first) {
    const SynVerb& v = c.v();
    const char* finite = c.tense == kPresent ? v.de3 : c.tense == kPerfect ? (v.sein ? "ist" : "hat")
                                                                           : kSynModals[c.modal].de;
    const std::string rest = c.tense == kPresent ? v.particle : c.tense == kPerfect ? v.pp : v.inf;
    return words({verb_first ? std::string(finite) : field_german(c, c.topic) + " " + finite,
                  middle_german(c, !verb_first), rest});
  }

  // Verb last: particle joined to the verb, participle before haben/sein, infinitive before the modal.
  static std::string sub_german(const Clause& c) {
    const SynVerb& v = c.v();
    std::string verbs = c.tense == kPresent ? std::string(v.particle) + v.de3
                        : c.tense == kPerfect ? std::string(v.pp) + (v.sein ? " ist" : " hat")
                                              : std::string(v.inf) + " " + kSynModals[c.modal].de;
    return words({middle_german(c, false), verbs});
  }

  // Subject, verb group (do-support under negation), object, "to" + indirect object, prepositional phrase, time.
  static std::string clause_english(const Clause& c) {
    const SynVerb& v = c.v();
    const std::string freq = c.has(kFrequency) ? std::string(kSynFrequencies[c.frequency].en) + " " : "";
    std::string verbs;
    if (c.tense == kPresent) verbs = c.negated ? std::string("does not ") + v.en_inf : freq + v.en3;
    else if (c.tense == kPerfect) verbs = std::string("has ") + (c.negated ? "not " : freq) + v.en_pp;
    else if (c.negated) verbs = std::string(kSynModals[c.modal].en_neg) + " " + v.en_inf;
    else verbs = std::string(kSynModals[c.modal].en) + " " + freq + v.en_inf;
    std::string out = english(c.subject) + " " + verbs;
    if (c.has(kAccusative)) out += " " + english(c.accusative);
    if (c.has(kDative)) out += " to " + english(c.dative);
    if (c.has(kPrepositional))
      out += std::string(" ") + kSynPrepositions[c.preposition].en + " " + english(c.object_of_preposition);
    if (c.has(kTime)) out += std::string(" ") + kSynTimes[c.time].en;
    return out;
  }

  static std::string capitalized(std::string s) {
    if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
    return s;
  }
};

int64_t word_count(const std::string& s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) n += s[i] != ' ' && (i == 0 || s[i - 1] == ' ');
  return n;
}

}  // namespace

ParallelText synthetic_translation_corpus(int64_t pairs, uint64_t seed) {
  if (pairs < 0) throw Error("synthetic_translation_corpus: pairs must be >= 0, got " + std::to_string(pairs));
  Generator gen(seed);
  ParallelText out;
  out.source.reserve(static_cast<size_t>(pairs));
  out.target.reserve(static_cast<size_t>(pairs));
  while (static_cast<int64_t>(out.source.size()) < pairs) {
    auto [de, en] = gen.sentence();
    const int64_t words = word_count(de);
    if (words < 4 || words > 25) continue;  // the length range of the demo; redrawn, still deterministic
    out.source.push_back(std::move(de));
    out.target.push_back(std::move(en));
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> synthetic_translation_nouns() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& n : kSynNouns) out.emplace_back(n.de, n.en);
  return out;
}

}  // namespace longseq
