// The enums' one table each (cufm/names.hpp): every name round-trips through to_string and parse_*,
// the choices and the errors come from the same rows, and the solvers' facts from their tableaux.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "cufm/cufm.hpp"
#include "test_util.hpp"

namespace cufm {
namespace {

template <class E>
void check_table(E (*parse)(const std::string&), size_t expected_rows) {
  const EnumTable<E>& t = enum_table<E>();
  EXPECT_EQ(t.size, expected_rows) << t.what;
  std::set<std::string> names;
  std::set<int> values;
  for (const EnumEntry<E>& e : t) {
    EXPECT_TRUE(names.insert(e.name).second) << t.what << ": '" << e.name << "' twice";
    EXPECT_TRUE(values.insert(static_cast<int>(e.value)).second) << t.what << ": a value twice";
    EXPECT_STREQ(to_string(e.value), e.name);
    EXPECT_EQ(parse(e.name), e.value) << e.name;
    std::string upper = e.name;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_EQ(parse(upper), e.value) << upper;
    if (e.alias) {
      EXPECT_EQ(parse(e.alias), e.value) << e.alias;
    }
    EXPECT_NE(enum_choices<E>().find(e.name), std::string::npos);
    EXPECT_NE(enum_help<E>().find(std::string(e.name) + " (" + e.help + ")"), std::string::npos);
    EXPECT_TRUE(enum_valid(e.value));
  }
  EXPECT_FALSE(enum_valid(static_cast<E>(99)));
  EXPECT_STREQ(enum_name(static_cast<E>(99)), "unknown");
  const std::string message = test::error_of([&] { (void)parse("no-such-name"); });
  EXPECT_EQ(message.find(std::string("unknown ") + t.what + " 'no-such-name': expected " + enum_choices<E>()),
            0u)
      << message;
}

TEST(Names, EveryTableRoundTripsAndNamesItsChoices) {
  check_table<Activation>(parse_activation, 3);
  check_table<LrSchedule>(parse_lr_schedule, 3);
  check_table<TimeSampling>(parse_time_sampling, 2);
  check_table<Optimizer>(parse_optimizer, 2);
  check_table<Device>(parse_device, 3);
  check_table<Precision>(parse_precision, 3);
  check_table<Solver>(parse_solver, 5);
  check_table<Divergence>(parse_divergence, 3);
  check_table<Coupling>(parse_coupling, 3);
}

TEST(Names, ChoicesReadAsAList) {
  EXPECT_EQ(enum_choices<Solver>(), "euler, midpoint, heun, rk4 or dopri5");
  EXPECT_EQ(enum_choices<TimeSampling>(), "uniform or logit-normal");
  EXPECT_EQ(parse_device("gpu"), Device::CUDA);
}

TEST(Names, SolverFactsComeFromTheTableaux) {
  EXPECT_EQ(solver_order(Solver::Euler), 1);
  EXPECT_EQ(solver_order(Solver::Midpoint), 2);
  EXPECT_EQ(solver_order(Solver::Heun), 2);
  EXPECT_EQ(solver_order(Solver::RK4), 4);
  EXPECT_EQ(solver_order(Solver::Dopri5), 5);
  EXPECT_EQ(solver_evaluations_per_step(Solver::Euler), 1);
  EXPECT_EQ(solver_evaluations_per_step(Solver::Midpoint), 2);
  EXPECT_EQ(solver_evaluations_per_step(Solver::RK4), 4);
  EXPECT_EQ(solver_evaluations_per_step(Solver::Dopri5), 6);
  // A fixed-step sample's evaluation count is the steps times the tableau's evaluations.
  Model model(MlpConfig{2, {8}}, 1);
  for (Solver s : {Solver::Euler, Solver::Midpoint, Solver::Heun, Solver::RK4}) {
    SampleConfig c;
    c.count = 4;
    c.steps = 3;
    c.solver = s;
    c.device = Device::CPU;
    EXPECT_EQ(sample(model, c).evaluations, 3 * solver_evaluations_per_step(s)) << to_string(s);
  }
}

}  // namespace
}  // namespace cufm
